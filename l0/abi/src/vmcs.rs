//! VMCS field encodings, typed by width (Intel SDM Vol. 3D, Appendix B "Field Encoding in
//! VMCS"; the format is SDM Vol. 3C, 25.11.2 "VMREAD, VMWRITE, and Encodings of VMCS Fields").
//!
//! L1 names the fields it VMREADs and VMWRITEs with the four enums [`Field16`], [`Field32`],
//! [`Field64`] and [`FieldNatural`], so a typed accessor cannot write a 64-bit value into a
//! 32-bit field. L0's soft engine receives raw encodings from L1's VMREAD/VMWRITE and decodes
//! them with [`width`], [`kind`], [`is_high`] and [`lookup`] (an encoding that [`lookup`] does
//! not know can be answered as an unsupported VMCS component, VM-instruction error 12).
//!
//! An encoding is a 32-bit value:
//!
//! | bits  | meaning                                                                      |
//! |-------|------------------------------------------------------------------------------|
//! | 0     | access type: 0 = full, 1 = high (the upper 32 bits of a 64-bit field only)   |
//! | 9:1   | index                                                                        |
//! | 11:10 | type ([`FieldKind`]): control, VM-exit information, guest state, host state  |
//! | 12    | reserved, 0                                                                  |
//! | 14:13 | width ([`FieldWidth`]): 16-bit, 64-bit, 32-bit, natural width                |
//! | 31:15 | reserved, 0                                                                  |
//!
//! The table lists the fields of Appendix B for VMX with EPT, VPID, unrestricted guest,
//! posted interrupts, PML, VMCS shadowing, #VE, XSAVES, SGX, TSC scaling and tertiary
//! controls. Fields of later or rarer features (sub-page permissions, Intel PT, LBR, CET, PKS,
//! FRED, HLAT, PASID translation, IPI virtualization, notify window, secondary VM-exit
//! controls) are not listed: [`lookup`] returns `None` for them.
//!
//! Each field is written once, in one `vmcs_fields!` invocation per width, which generates
//! both the enum and that width's rows of the [`ALL`] table, so the two cannot drift. The
//! unit tests check every row's encoding bits against its stated width and kind.

abi_enum! {
    /// The width of a VMCS field: bits 14:13 of its encoding.
    pub enum FieldWidth: u32 {
        /// 16-bit.
        Bits16 = 0,
        /// 64-bit (accessible as a whole, or as two 32-bit halves: full and high).
        Bits64 = 1,
        /// 32-bit.
        Bits32 = 2,
        /// Natural width: 64 bits on processors that support Intel 64, else 32.
        Natural = 3,
    }
}

abi_enum! {
    /// The type of a VMCS field: bits 11:10 of its encoding.
    pub enum FieldKind: u32 {
        /// A control field (VM-execution, VM-exit or VM-entry controls).
        Control = 0,
        /// A VM-exit information field ("read-only data" in the SDM): VMWRITE to it fails
        /// with VM-instruction error 13 unless IA32_VMX_MISC bit 29 is 1.
        ReadOnlyData = 1,
        /// A guest-state field.
        GuestState = 2,
        /// A host-state field.
        HostState = 3,
    }
}

/// One VMCS field, as listed in [`ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// The encoding (for a 64-bit field, the "full" access).
    pub encoding: u32,
    /// The field's name, in snake case (`"guest_rip"`, `"vm_exit_reason"`).
    pub name: &'static str,
    /// The field's width.
    pub width: FieldWidth,
    /// The field's type.
    pub kind: FieldKind,
}

impl FieldInfo {
    /// The encoding of the upper 32 bits of a 64-bit field, `None` for other widths.
    #[must_use]
    pub const fn high_encoding(&self) -> Option<u32> {
        match self.width {
            FieldWidth::Bits64 => Some(self.encoding | 1),
            _ => None,
        }
    }
}

/// Bits that are 0 in every valid encoding: bit 12 and bits 31:15.
const RESERVED_BITS: u32 = !0x6FFF;

/// The width of the field an encoding names, or `None` when the encoding is malformed: a
/// reserved bit set (bit 12, bits 31:15), or high access to a field that is not 64-bit.
#[must_use]
pub const fn width(enc: u32) -> Option<FieldWidth> {
    if enc & RESERVED_BITS != 0 {
        return None;
    }
    match FieldWidth::from_raw((enc >> 13) & 3) {
        Some(FieldWidth::Bits64) => Some(FieldWidth::Bits64),
        Some(w) if enc & 1 == 0 => Some(w),
        _ => None,
    }
}

/// The type of the field an encoding names, or `None` when the encoding is malformed (see
/// [`width`]).
#[must_use]
pub const fn kind(enc: u32) -> Option<FieldKind> {
    if width(enc).is_none() {
        return None;
    }
    FieldKind::from_raw((enc >> 10) & 3)
}

/// Whether an encoding is the high access (upper 32 bits) of a 64-bit field.
#[must_use]
pub const fn is_high(enc: u32) -> bool {
    enc & 1 == 1 && width(enc).is_some()
}

/// Whether an encoding names a VM-exit information ("read-only data") field. VMWRITE to such a
/// field fails with VM-instruction error 13 unless IA32_VMX_MISC bit 29 is 1 (SDM 25.11.2,
/// 31.3 "VMWRITE").
#[must_use]
pub const fn is_read_only(enc: u32) -> bool {
    matches!(kind(enc), Some(FieldKind::ReadOnlyData))
}

/// The index of an encoding: bits 9:1.
#[must_use]
pub const fn index(enc: u32) -> u32 {
    (enc >> 1) & 0x1FF
}

/// The field an encoding names, or `None` for an encoding not in [`ALL`]. The high access of a
/// 64-bit field finds that field (its [`FieldInfo::encoding`] is the full one); [`is_high`]
/// tells the two halves apart.
#[must_use]
pub const fn lookup(enc: u32) -> Option<FieldInfo> {
    if width(enc).is_none() {
        return None;
    }
    let full = enc & !1;
    let mut i = 0;
    while i < ALL.len() {
        if ALL[i].encoding == full {
            return Some(ALL[i]);
        }
        i += 1;
    }
    None
}

/// Generates one width's enum (each variant's discriminant is its encoding) and that width's
/// rows of the [`ALL`] table, from one list grouped by [`FieldKind`].
macro_rules! vmcs_fields {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $width:ident {
            $(
                $kind:ident {
                    $( $(#[$vmeta:meta])* $variant:ident = $enc:literal => $fname:literal, )*
                }
            )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($( $(#[$vmeta])* $variant = $enc, )*)*
        }

        impl $name {
            /// Every field of this width, in the SDM's order.
            pub const VARIANTS: &'static [Self] = &[$($( Self::$variant, )*)*];

            /// This width's rows of [`ALL`].
            const FIELDS: &'static [FieldInfo] = &[$($( Self::$variant.info(), )*)*];

            /// The field's encoding (for a 64-bit field, the full access).
            #[must_use]
            pub const fn encoding(self) -> u32 {
                self as u32
            }

            /// The field with this encoding, or `None` if it names no field of this width.
            #[must_use]
            pub const fn from_raw(enc: u32) -> Option<Self> {
                $($( if enc == $enc { return Some(Self::$variant); } )*)*
                None
            }

            /// The field's row of [`ALL`].
            #[must_use]
            pub const fn info(self) -> FieldInfo {
                match self {
                    $($( Self::$variant => FieldInfo {
                        encoding: $enc,
                        name: $fname,
                        width: FieldWidth::$width,
                        kind: FieldKind::$kind,
                    }, )*)*
                }
            }

            /// The field's name, in snake case.
            #[must_use]
            pub const fn name(self) -> &'static str {
                self.info().name
            }

            /// The field's type.
            #[must_use]
            pub const fn kind(self) -> FieldKind {
                self.info().kind
            }
        }
    };
}

vmcs_fields! {
    /// The 16-bit fields (SDM Appendix B.1).
    pub enum Field16: Bits16 {
        // B.1.1, Table B-1: 16-bit control fields.
        Control {
            /// Virtual-processor identifier (VPID).
            VirtualProcessorId = 0x0000 => "virtual_processor_id",
            /// Posted-interrupt notification vector.
            PostedInterruptNotificationVector = 0x0002 => "posted_interrupt_notification_vector",
            /// EPTP index.
            EptpIndex = 0x0004 => "eptp_index",
        }
        // B.1.2, Table B-2: 16-bit guest-state fields.
        GuestState {
            /// Guest ES selector.
            GuestEsSelector = 0x0800 => "guest_es_selector",
            /// Guest CS selector.
            GuestCsSelector = 0x0802 => "guest_cs_selector",
            /// Guest SS selector.
            GuestSsSelector = 0x0804 => "guest_ss_selector",
            /// Guest DS selector.
            GuestDsSelector = 0x0806 => "guest_ds_selector",
            /// Guest FS selector.
            GuestFsSelector = 0x0808 => "guest_fs_selector",
            /// Guest GS selector.
            GuestGsSelector = 0x080A => "guest_gs_selector",
            /// Guest LDTR selector.
            GuestLdtrSelector = 0x080C => "guest_ldtr_selector",
            /// Guest TR selector.
            GuestTrSelector = 0x080E => "guest_tr_selector",
            /// Guest interrupt status.
            GuestInterruptStatus = 0x0810 => "guest_interrupt_status",
            /// PML index.
            PmlIndex = 0x0812 => "pml_index",
        }
        // B.1.3, Table B-3: 16-bit host-state fields.
        HostState {
            /// Host ES selector.
            HostEsSelector = 0x0C00 => "host_es_selector",
            /// Host CS selector.
            HostCsSelector = 0x0C02 => "host_cs_selector",
            /// Host SS selector.
            HostSsSelector = 0x0C04 => "host_ss_selector",
            /// Host DS selector.
            HostDsSelector = 0x0C06 => "host_ds_selector",
            /// Host FS selector.
            HostFsSelector = 0x0C08 => "host_fs_selector",
            /// Host GS selector.
            HostGsSelector = 0x0C0A => "host_gs_selector",
            /// Host TR selector.
            HostTrSelector = 0x0C0C => "host_tr_selector",
        }
    }
}

vmcs_fields! {
    /// The 64-bit fields (SDM Appendix B.2), by their full encoding; [`Field64::high`] gives
    /// the encoding of the upper 32 bits.
    pub enum Field64: Bits64 {
        // B.2.1, Table B-4: 64-bit control fields.
        Control {
            /// Address of I/O bitmap A.
            IoBitmapA = 0x2000 => "io_bitmap_a",
            /// Address of I/O bitmap B.
            IoBitmapB = 0x2002 => "io_bitmap_b",
            /// Address of MSR bitmaps.
            MsrBitmap = 0x2004 => "msr_bitmap",
            /// VM-exit MSR-store address.
            VmExitMsrStoreAddr = 0x2006 => "vm_exit_msr_store_addr",
            /// VM-exit MSR-load address.
            VmExitMsrLoadAddr = 0x2008 => "vm_exit_msr_load_addr",
            /// VM-entry MSR-load address.
            VmEntryMsrLoadAddr = 0x200A => "vm_entry_msr_load_addr",
            /// Executive-VMCS pointer.
            ExecutiveVmcsPointer = 0x200C => "executive_vmcs_pointer",
            /// PML address.
            PmlAddress = 0x200E => "pml_address",
            /// TSC offset.
            TscOffset = 0x2010 => "tsc_offset",
            /// Virtual-APIC address.
            VirtualApicAddress = 0x2012 => "virtual_apic_address",
            /// APIC-access address.
            ApicAccessAddress = 0x2014 => "apic_access_address",
            /// Posted-interrupt descriptor address.
            PostedInterruptDescAddress = 0x2016 => "posted_interrupt_desc_address",
            /// VM-function controls.
            VmFunctionControls = 0x2018 => "vm_function_controls",
            /// EPT pointer (EPTP).
            EptPointer = 0x201A => "ept_pointer",
            /// EOI-exit bitmap 0 (EOI_EXIT0).
            EoiExitBitmap0 = 0x201C => "eoi_exit_bitmap0",
            /// EOI-exit bitmap 1 (EOI_EXIT1).
            EoiExitBitmap1 = 0x201E => "eoi_exit_bitmap1",
            /// EOI-exit bitmap 2 (EOI_EXIT2).
            EoiExitBitmap2 = 0x2020 => "eoi_exit_bitmap2",
            /// EOI-exit bitmap 3 (EOI_EXIT3).
            EoiExitBitmap3 = 0x2022 => "eoi_exit_bitmap3",
            /// EPTP-list address.
            EptpListAddress = 0x2024 => "eptp_list_address",
            /// VMREAD-bitmap address.
            VmreadBitmap = 0x2026 => "vmread_bitmap",
            /// VMWRITE-bitmap address.
            VmwriteBitmap = 0x2028 => "vmwrite_bitmap",
            /// Virtualization-exception information address.
            VirtualizationExceptionInfoAddress = 0x202A => "virtualization_exception_info_address",
            /// XSS-exiting bitmap.
            XssExitingBitmap = 0x202C => "xss_exiting_bitmap",
            /// ENCLS-exiting bitmap.
            EnclsExitingBitmap = 0x202E => "encls_exiting_bitmap",
            /// TSC multiplier.
            TscMultiplier = 0x2032 => "tsc_multiplier",
            /// Tertiary processor-based VM-execution controls.
            TertiaryProcBasedVmExecControl = 0x2034 => "tertiary_proc_based_vm_exec_control",
        }
        // B.2.2, Table B-5: 64-bit read-only data field.
        ReadOnlyData {
            /// Guest-physical address.
            GuestPhysicalAddress = 0x2400 => "guest_physical_address",
        }
        // B.2.3, Table B-6: 64-bit guest-state fields.
        GuestState {
            /// VMCS link pointer.
            VmcsLinkPointer = 0x2800 => "vmcs_link_pointer",
            /// Guest IA32_DEBUGCTL.
            GuestIa32Debugctl = 0x2802 => "guest_ia32_debugctl",
            /// Guest IA32_PAT.
            GuestIa32Pat = 0x2804 => "guest_ia32_pat",
            /// Guest IA32_EFER.
            GuestIa32Efer = 0x2806 => "guest_ia32_efer",
            /// Guest IA32_PERF_GLOBAL_CTRL.
            GuestIa32PerfGlobalCtrl = 0x2808 => "guest_ia32_perf_global_ctrl",
            /// Guest PDPTE0.
            GuestPdpte0 = 0x280A => "guest_pdpte0",
            /// Guest PDPTE1.
            GuestPdpte1 = 0x280C => "guest_pdpte1",
            /// Guest PDPTE2.
            GuestPdpte2 = 0x280E => "guest_pdpte2",
            /// Guest PDPTE3.
            GuestPdpte3 = 0x2810 => "guest_pdpte3",
            /// Guest IA32_BNDCFGS.
            GuestIa32Bndcfgs = 0x2812 => "guest_ia32_bndcfgs",
        }
        // B.2.4, Table B-7: 64-bit host-state fields.
        HostState {
            /// Host IA32_PAT.
            HostIa32Pat = 0x2C00 => "host_ia32_pat",
            /// Host IA32_EFER.
            HostIa32Efer = 0x2C02 => "host_ia32_efer",
            /// Host IA32_PERF_GLOBAL_CTRL.
            HostIa32PerfGlobalCtrl = 0x2C04 => "host_ia32_perf_global_ctrl",
        }
    }
}

impl Field64 {
    /// The encoding of the field's upper 32 bits (high access: the full encoding with bit 0
    /// set), for VMREAD/VMWRITE of one half in 32-bit mode.
    #[must_use]
    pub const fn high(self) -> u32 {
        self as u32 | 1
    }
}

vmcs_fields! {
    /// The 32-bit fields (SDM Appendix B.3).
    pub enum Field32: Bits32 {
        // B.3.1, Table B-8: 32-bit control fields.
        Control {
            /// Pin-based VM-execution controls.
            PinBasedVmExecControl = 0x4000 => "pin_based_vm_exec_control",
            /// Primary processor-based VM-execution controls.
            PrimaryProcBasedVmExecControl = 0x4002 => "primary_proc_based_vm_exec_control",
            /// Exception bitmap.
            ExceptionBitmap = 0x4004 => "exception_bitmap",
            /// Page-fault error-code mask.
            PageFaultErrorCodeMask = 0x4006 => "page_fault_error_code_mask",
            /// Page-fault error-code match.
            PageFaultErrorCodeMatch = 0x4008 => "page_fault_error_code_match",
            /// CR3-target count.
            Cr3TargetCount = 0x400A => "cr3_target_count",
            /// Primary VM-exit controls ("VM-exit controls" before secondary ones existed).
            VmExitControls = 0x400C => "vm_exit_controls",
            /// VM-exit MSR-store count.
            VmExitMsrStoreCount = 0x400E => "vm_exit_msr_store_count",
            /// VM-exit MSR-load count.
            VmExitMsrLoadCount = 0x4010 => "vm_exit_msr_load_count",
            /// VM-entry controls.
            VmEntryControls = 0x4012 => "vm_entry_controls",
            /// VM-entry MSR-load count.
            VmEntryMsrLoadCount = 0x4014 => "vm_entry_msr_load_count",
            /// VM-entry interruption-information field.
            VmEntryInterruptionInfo = 0x4016 => "vm_entry_interruption_info",
            /// VM-entry exception error code.
            VmEntryExceptionErrorCode = 0x4018 => "vm_entry_exception_error_code",
            /// VM-entry instruction length.
            VmEntryInstructionLength = 0x401A => "vm_entry_instruction_length",
            /// TPR threshold.
            TprThreshold = 0x401C => "tpr_threshold",
            /// Secondary processor-based VM-execution controls.
            SecondaryProcBasedVmExecControl = 0x401E => "secondary_proc_based_vm_exec_control",
            /// PLE_Gap.
            PleGap = 0x4020 => "ple_gap",
            /// PLE_Window.
            PleWindow = 0x4022 => "ple_window",
        }
        // B.3.2, Table B-9: 32-bit read-only data fields.
        ReadOnlyData {
            /// VM-instruction error.
            VmInstructionError = 0x4400 => "vm_instruction_error",
            /// Exit reason.
            VmExitReason = 0x4402 => "vm_exit_reason",
            /// VM-exit interruption information.
            VmExitInterruptionInfo = 0x4404 => "vm_exit_interruption_info",
            /// VM-exit interruption error code.
            VmExitInterruptionErrorCode = 0x4406 => "vm_exit_interruption_error_code",
            /// IDT-vectoring information field.
            IdtVectoringInfo = 0x4408 => "idt_vectoring_info",
            /// IDT-vectoring error code.
            IdtVectoringErrorCode = 0x440A => "idt_vectoring_error_code",
            /// VM-exit instruction length.
            VmExitInstructionLength = 0x440C => "vm_exit_instruction_length",
            /// VM-exit instruction information.
            VmExitInstructionInfo = 0x440E => "vm_exit_instruction_info",
        }
        // B.3.3, Table B-10: 32-bit guest-state fields.
        GuestState {
            /// Guest ES limit.
            GuestEsLimit = 0x4800 => "guest_es_limit",
            /// Guest CS limit.
            GuestCsLimit = 0x4802 => "guest_cs_limit",
            /// Guest SS limit.
            GuestSsLimit = 0x4804 => "guest_ss_limit",
            /// Guest DS limit.
            GuestDsLimit = 0x4806 => "guest_ds_limit",
            /// Guest FS limit.
            GuestFsLimit = 0x4808 => "guest_fs_limit",
            /// Guest GS limit.
            GuestGsLimit = 0x480A => "guest_gs_limit",
            /// Guest LDTR limit.
            GuestLdtrLimit = 0x480C => "guest_ldtr_limit",
            /// Guest TR limit.
            GuestTrLimit = 0x480E => "guest_tr_limit",
            /// Guest GDTR limit.
            GuestGdtrLimit = 0x4810 => "guest_gdtr_limit",
            /// Guest IDTR limit.
            GuestIdtrLimit = 0x4812 => "guest_idtr_limit",
            /// Guest ES access rights.
            GuestEsAccessRights = 0x4814 => "guest_es_access_rights",
            /// Guest CS access rights.
            GuestCsAccessRights = 0x4816 => "guest_cs_access_rights",
            /// Guest SS access rights.
            GuestSsAccessRights = 0x4818 => "guest_ss_access_rights",
            /// Guest DS access rights.
            GuestDsAccessRights = 0x481A => "guest_ds_access_rights",
            /// Guest FS access rights.
            GuestFsAccessRights = 0x481C => "guest_fs_access_rights",
            /// Guest GS access rights.
            GuestGsAccessRights = 0x481E => "guest_gs_access_rights",
            /// Guest LDTR access rights.
            GuestLdtrAccessRights = 0x4820 => "guest_ldtr_access_rights",
            /// Guest TR access rights.
            GuestTrAccessRights = 0x4822 => "guest_tr_access_rights",
            /// Guest interruptibility state.
            GuestInterruptibilityState = 0x4824 => "guest_interruptibility_state",
            /// Guest activity state.
            GuestActivityState = 0x4826 => "guest_activity_state",
            /// Guest SMBASE.
            GuestSmbase = 0x4828 => "guest_smbase",
            /// Guest IA32_SYSENTER_CS.
            GuestIa32SysenterCs = 0x482A => "guest_ia32_sysenter_cs",
            /// VMX-preemption timer value.
            VmxPreemptionTimerValue = 0x482E => "vmx_preemption_timer_value",
        }
        // B.3.4, Table B-11: 32-bit host-state field.
        HostState {
            /// Host IA32_SYSENTER_CS.
            HostIa32SysenterCs = 0x4C00 => "host_ia32_sysenter_cs",
        }
    }
}

vmcs_fields! {
    /// The natural-width fields (SDM Appendix B.4).
    pub enum FieldNatural: Natural {
        // B.4.1, Table B-12: natural-width control fields.
        Control {
            /// CR0 guest/host mask.
            Cr0GuestHostMask = 0x6000 => "cr0_guest_host_mask",
            /// CR4 guest/host mask.
            Cr4GuestHostMask = 0x6002 => "cr4_guest_host_mask",
            /// CR0 read shadow.
            Cr0ReadShadow = 0x6004 => "cr0_read_shadow",
            /// CR4 read shadow.
            Cr4ReadShadow = 0x6006 => "cr4_read_shadow",
            /// CR3-target value 0.
            Cr3TargetValue0 = 0x6008 => "cr3_target_value0",
            /// CR3-target value 1.
            Cr3TargetValue1 = 0x600A => "cr3_target_value1",
            /// CR3-target value 2.
            Cr3TargetValue2 = 0x600C => "cr3_target_value2",
            /// CR3-target value 3.
            Cr3TargetValue3 = 0x600E => "cr3_target_value3",
        }
        // B.4.2, Table B-13: natural-width read-only data fields.
        ReadOnlyData {
            /// Exit qualification.
            ExitQualification = 0x6400 => "exit_qualification",
            /// I/O RCX.
            IoRcx = 0x6402 => "io_rcx",
            /// I/O RSI.
            IoRsi = 0x6404 => "io_rsi",
            /// I/O RDI.
            IoRdi = 0x6406 => "io_rdi",
            /// I/O RIP.
            IoRip = 0x6408 => "io_rip",
            /// Guest-linear address.
            GuestLinearAddress = 0x640A => "guest_linear_address",
        }
        // B.4.3, Table B-14: natural-width guest-state fields.
        GuestState {
            /// Guest CR0.
            GuestCr0 = 0x6800 => "guest_cr0",
            /// Guest CR3.
            GuestCr3 = 0x6802 => "guest_cr3",
            /// Guest CR4.
            GuestCr4 = 0x6804 => "guest_cr4",
            /// Guest ES base.
            GuestEsBase = 0x6806 => "guest_es_base",
            /// Guest CS base.
            GuestCsBase = 0x6808 => "guest_cs_base",
            /// Guest SS base.
            GuestSsBase = 0x680A => "guest_ss_base",
            /// Guest DS base.
            GuestDsBase = 0x680C => "guest_ds_base",
            /// Guest FS base.
            GuestFsBase = 0x680E => "guest_fs_base",
            /// Guest GS base.
            GuestGsBase = 0x6810 => "guest_gs_base",
            /// Guest LDTR base.
            GuestLdtrBase = 0x6812 => "guest_ldtr_base",
            /// Guest TR base.
            GuestTrBase = 0x6814 => "guest_tr_base",
            /// Guest GDTR base.
            GuestGdtrBase = 0x6816 => "guest_gdtr_base",
            /// Guest IDTR base.
            GuestIdtrBase = 0x6818 => "guest_idtr_base",
            /// Guest DR7.
            GuestDr7 = 0x681A => "guest_dr7",
            /// Guest RSP.
            GuestRsp = 0x681C => "guest_rsp",
            /// Guest RIP.
            GuestRip = 0x681E => "guest_rip",
            /// Guest RFLAGS.
            GuestRflags = 0x6820 => "guest_rflags",
            /// Guest pending debug exceptions.
            GuestPendingDebugExceptions = 0x6822 => "guest_pending_debug_exceptions",
            /// Guest IA32_SYSENTER_ESP.
            GuestIa32SysenterEsp = 0x6824 => "guest_ia32_sysenter_esp",
            /// Guest IA32_SYSENTER_EIP.
            GuestIa32SysenterEip = 0x6826 => "guest_ia32_sysenter_eip",
        }
        // B.4.4, Table B-15: natural-width host-state fields.
        HostState {
            /// Host CR0.
            HostCr0 = 0x6C00 => "host_cr0",
            /// Host CR3.
            HostCr3 = 0x6C02 => "host_cr3",
            /// Host CR4.
            HostCr4 = 0x6C04 => "host_cr4",
            /// Host FS base.
            HostFsBase = 0x6C06 => "host_fs_base",
            /// Host GS base.
            HostGsBase = 0x6C08 => "host_gs_base",
            /// Host TR base.
            HostTrBase = 0x6C0A => "host_tr_base",
            /// Host GDTR base.
            HostGdtrBase = 0x6C0C => "host_gdtr_base",
            /// Host IDTR base.
            HostIdtrBase = 0x6C0E => "host_idtr_base",
            /// Host IA32_SYSENTER_ESP.
            HostIa32SysenterEsp = 0x6C10 => "host_ia32_sysenter_esp",
            /// Host IA32_SYSENTER_EIP.
            HostIa32SysenterEip = 0x6C12 => "host_ia32_sysenter_eip",
            /// Host RSP.
            HostRsp = 0x6C14 => "host_rsp",
            /// Host RIP.
            HostRip = 0x6C16 => "host_rip",
        }
    }
}

/// Every VMCS field this ABI knows, each exactly once: the 16-bit, 64-bit, 32-bit and
/// natural-width fields (the order of the width bits), each width in the SDM's order.
pub static ALL: &[FieldInfo] = &ALL_ROWS;

const ALL_LEN: usize =
    Field16::FIELDS.len() + Field64::FIELDS.len() + Field32::FIELDS.len() + FieldNatural::FIELDS.len();

static ALL_ROWS: [FieldInfo; ALL_LEN] =
    concat([Field16::FIELDS, Field64::FIELDS, Field32::FIELDS, FieldNatural::FIELDS]);

/// The rows of `parts`, in order, as one array of exactly `N` rows (a shorter or longer total
/// fails to compile).
const fn concat<const N: usize>(parts: [&[FieldInfo]; 4]) -> [FieldInfo; N] {
    const EMPTY: FieldInfo = FieldInfo { encoding: 0, name: "", width: FieldWidth::Bits16, kind: FieldKind::Control };
    let mut out = [EMPTY; N];
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(n == N, "concat: the parts do not add up to N rows");
    out
}

/// The highest index (bits 9:1 of an encoding) among the fields in [`ALL`]: what an
/// emulated IA32_VMX_VMCS_ENUM reports in its bits 9:1 (SDM A.9).
pub const MAX_INDEX: u32 = {
    let mut max = 0;
    let mut i = 0;
    while i < ALL_ROWS.len() {
        let idx = index(ALL_ROWS[i].encoding);
        if idx > max {
            max = idx;
        }
        i += 1;
    }
    max
};

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::string::String;

    use super::*;

    /// `GuestIa32Efer` -> `guest_ia32_efer`.
    fn snake(camel: &str) -> String {
        let mut s = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    }

    #[test]
    fn every_encoding_agrees_with_its_width_and_kind() {
        for f in ALL {
            let e = f.encoding;
            assert_eq!(width(e), Some(f.width), "{} {e:#06x}: width bits", f.name);
            assert_eq!(kind(e), Some(f.kind), "{} {e:#06x}: type bits", f.name);
            assert_eq!(e & 1, 0, "{} {e:#06x}: listed by its high access", f.name);
            assert_eq!(e & (1 << 12), 0, "{} {e:#06x}: bit 12 set", f.name);
            assert_eq!(e >> 15, 0, "{} {e:#06x}: bits 31:15 set", f.name);
            assert!(!is_high(e));
            assert_eq!(lookup(e), Some(*f));
        }
    }

    #[test]
    fn encodings_and_names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.encoding, b.encoding, "{} and {} share an encoding", a.name, b.name);
                assert_ne!(a.name, b.name, "two fields named {}", a.name);
            }
        }
    }

    #[test]
    fn field_counts_per_width() {
        assert_eq!(Field16::VARIANTS.len(), 20);
        assert_eq!(Field64::VARIANTS.len(), 40);
        assert_eq!(Field32::VARIANTS.len(), 50);
        assert_eq!(FieldNatural::VARIANTS.len(), 46);
        assert_eq!(ALL.len(), 156);
        let count = |w| ALL.iter().filter(|f| f.width == w).count();
        assert_eq!(count(FieldWidth::Bits16), 20);
        assert_eq!(count(FieldWidth::Bits64), 40);
        assert_eq!(count(FieldWidth::Bits32), 50);
        assert_eq!(count(FieldWidth::Natural), 46);
        assert_eq!(ALL.iter().filter(|f| is_read_only(f.encoding)).count(), 8 + 1 + 6);
    }

    #[test]
    fn typed_enums_match_the_table() {
        fn check<T: Copy + PartialEq + core::fmt::Debug>(
            variants: &[T],
            info: fn(T) -> FieldInfo,
            from_raw: fn(u32) -> Option<T>,
            w: FieldWidth,
        ) {
            for &v in variants {
                let f = info(v);
                assert_eq!(f.width, w);
                assert_eq!(f.name, snake(&format!("{v:?}")), "name of {v:?}");
                assert_eq!(from_raw(f.encoding), Some(v));
                assert_eq!(lookup(f.encoding), Some(f));
            }
        }
        check(Field16::VARIANTS, Field16::info, Field16::from_raw, FieldWidth::Bits16);
        check(Field64::VARIANTS, Field64::info, Field64::from_raw, FieldWidth::Bits64);
        check(Field32::VARIANTS, Field32::info, Field32::from_raw, FieldWidth::Bits32);
        check(FieldNatural::VARIANTS, FieldNatural::info, FieldNatural::from_raw, FieldWidth::Natural);
        // An encoding of another width is not a field of this one.
        assert_eq!(Field16::from_raw(0x681E), None);
        assert_eq!(Field32::from_raw(0x0800), None);
        assert_eq!(Field64::from_raw(0x201B), None);
        assert_eq!(FieldNatural::from_raw(0x4402), None);
    }

    #[test]
    fn well_known_encodings() {
        // Intel SDM Vol. 3D, Appendix B (and KVM's enum vmcs_field).
        assert_eq!(Field16::GuestEsSelector.encoding(), 0x0800);
        assert_eq!(Field64::EptPointer.encoding(), 0x201A);
        assert_eq!(Field64::VmreadBitmap.encoding(), 0x2026);
        assert_eq!(Field64::VmwriteBitmap.encoding(), 0x2028);
        assert_eq!(Field64::VmcsLinkPointer.encoding(), 0x2800);
        assert_eq!(Field32::PinBasedVmExecControl.encoding(), 0x4000);
        assert_eq!(Field32::VmInstructionError.encoding(), 0x4400);
        assert_eq!(Field32::VmExitReason.encoding(), 0x4402);
        assert_eq!(Field32::GuestInterruptibilityState.encoding(), 0x4824);
        assert_eq!(FieldNatural::ExitQualification.encoding(), 0x6400);
        assert_eq!(FieldNatural::GuestRip.encoding(), 0x681E);
        assert_eq!(FieldNatural::HostRip.encoding(), 0x6C16);
        assert_eq!(FieldNatural::GuestRip.name(), "guest_rip");
        assert_eq!(Field32::VmExitReason.name(), "vm_exit_reason");
        assert_eq!(Field64::IoBitmapA.name(), "io_bitmap_a");
        assert_eq!(Field32::VmExitReason.kind(), FieldKind::ReadOnlyData);
        assert_eq!(Field16::HostTrSelector.kind(), FieldKind::HostState);
        assert_eq!(MAX_INDEX, 0x1A); // tertiary processor-based controls, 0x2034
    }

    #[test]
    fn high_half_of_a_64_bit_field() {
        assert_eq!(Field64::EptPointer.high(), 0x201B);
        assert_eq!(Field64::EptPointer.info().high_encoding(), Some(0x201B));
        assert_eq!(FieldNatural::GuestRip.info().high_encoding(), None);
        let f = lookup(0x201B).expect("EPT pointer, high");
        assert_eq!(f, Field64::EptPointer.info());
        assert!(is_high(0x201B));
        assert_eq!(width(0x201B), Some(FieldWidth::Bits64));
        assert_eq!(kind(0x201B), Some(FieldKind::Control));
        // The high half of a read-only field is read-only too.
        assert!(is_read_only(Field64::GuestPhysicalAddress.high()));
        for f in ALL.iter().filter(|f| f.width == FieldWidth::Bits64) {
            assert_eq!(lookup(f.encoding | 1), Some(*f));
        }
    }

    #[test]
    fn malformed_and_unknown_encodings() {
        // High access to a field that is not 64-bit.
        assert_eq!(width(0x0801), None);
        assert_eq!(width(0x4403), None);
        assert_eq!(lookup(0x681F), None);
        assert!(!is_high(0x681F));
        // Reserved bits.
        assert_eq!(width(0x1000), None);
        assert_eq!(width(0x8000), None);
        assert_eq!(kind(0x1_681E), None);
        assert_eq!(lookup(0x681E | 1 << 12), None);
        assert_eq!(lookup(u32::MAX), None);
        // Well formed but not listed: sub-page-permission-table pointer, HLAT prefix size,
        // index 0x1F of the 32-bit guest-state fields.
        assert_eq!(width(0x2030), Some(FieldWidth::Bits64));
        assert_eq!(lookup(0x2030), None);
        assert_eq!(lookup(0x2031), None);
        assert_eq!(lookup(0x0006), None);
        assert_eq!(lookup(0x483E), None);
    }

    #[test]
    fn read_only_is_the_vm_exit_information_type() {
        assert!(is_read_only(Field32::VmExitReason.encoding()));
        assert!(is_read_only(FieldNatural::ExitQualification.encoding()));
        assert!(is_read_only(FieldNatural::GuestLinearAddress.encoding()));
        assert!(!is_read_only(FieldNatural::GuestRip.encoding()));
        assert!(!is_read_only(Field32::VmEntryInterruptionInfo.encoding()));
        assert!(!is_read_only(0x4401)); // malformed, not read-only
    }
}
