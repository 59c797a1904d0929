//! KVM's nested-VMX tracepoints, parsed from tracefs text (`/sys/kernel/tracing/trace`), per
//! the TP_printk formats of arch/x86/kvm/trace.h:
//!
//! * `kvm_exit`: every VM exit KVM handles, L1's and L2's (`vcpu N reason NAME rip 0x...
//!   info1 0x... info2 0x... intr_info 0x... error_code 0x...`).
//! * `kvm_nested_vmexit`: the exits that happened while L2 ran (same format), before KVM
//!   decides who handles them (nested_vmx_reflect_vmexit).
//! * `kvm_nested_vmexit_inject`: the ones KVM reflected to L1 (`reason: NAME ext_inf1: 0x...
//!   ext_inf2: 0x... ext_int: 0x... ext_int_err: 0x...`).
//! * `kvm_nested_vmenter`: L1's VMLAUNCH/VMRESUME (SVM: VMRUN) entering L2.
//! * `kvm_nested_vmenter_failed`: the consistency check an entry failed, as KVM's `CC()`
//!   names it (`control->asid == 0`, `!(save->efer & EFER_SVME)`, ...), kept as text.
//!
//! On AMD hosts the same events carry SVM's names (`isa` = SVM): `io`, `npf`, `vmrun`.
//!
//! So: L2 exits = nested_vmexit; reflected to L1 = nested_vmexit_inject; handled by L0 alone
//! = the difference; L1's own exits = kvm_exit - nested_vmexit, and per reflected exit they
//! are the L1 traps the reflection multiplied into (VMREAD/VMWRITE without shadowing, the
//! VMRESUME always).

pub use nestbench_protocol::kvm_engine::NestedCounts;
use std::collections::BTreeMap;

/// One parsed trace line: the task's thread id, the event name and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// TID of the task (the number after the last `-` of `comm-tid`).
    pub tid: u32,
    /// The event (`kvm_exit`, ...).
    pub event: &'a str,
    /// What TP_printk printed.
    pub text: &'a str,
}

/// Split a tracefs line (`  comm-TID  [CPU] FLAGS  TIMESTAMP: EVENT: TEXT`); `None` for
/// comments and lines of another shape.
#[must_use]
pub fn line(l: &str) -> Option<Line<'_>> {
    let l = l.trim_start();
    if l.starts_with('#') {
        return None;
    }
    let bracket = l.find(" [")?;
    let task = l[..bracket].trim_end();
    let tid = task.rsplit_once('-')?.1.parse().ok()?;
    let after = &l[bracket..];
    let ts_end = after.find(": ")?;
    let rest = &after[ts_end + 2..];
    let (event, text) = rest.split_once(": ")?;
    Some(Line { tid, event, text })
}

/// The exit reason name of a kvm_exit/kvm_nested_vmexit text (`... reason NAME rip ...`) or
/// a kvm_nested_vmexit_inject text (`reason: NAME ext_inf1: ...`).
fn reason(text: &str) -> Option<&str> {
    let (_, after) = text.split_once("reason")?;
    let after = after.trim_start_matches(':').trim_start();
    let end = after.find(" rip ").or_else(|| after.find(" ext_inf1:"))?;
    Some(after[..end].trim())
}

/// Most `kvm_nested_vmenter_failed` texts kept per run.
pub const MAX_FAILED_CHECKS: usize = 16;

/// Count the nested-VMX events of `text` from thread `tid` (`None`: every thread).
#[must_use]
pub fn count(text: &str, tid: Option<u32>) -> NestedCounts {
    let mut c = NestedCounts::default();
    for raw in text.lines() {
        let Some(l) = line(raw) else {
            if !raw.trim_start().starts_with('#') && !raw.trim().is_empty() {
                c.other_lines += 1;
            }
            continue;
        };
        if tid.is_some_and(|t| t != l.tid) {
            continue;
        }
        let bump = |m: &mut BTreeMap<String, u64>| {
            if let Some(r) = reason(l.text) {
                *m.entry(r.to_owned()).or_default() += 1;
            }
        };
        match l.event {
            "kvm_exit" => {
                c.kvm_exit += 1;
                bump(&mut c.l1_exits_by_reason);
            }
            "kvm_nested_vmexit" => {
                c.nested_vmexit += 1;
                bump(&mut c.l2_exits_by_reason);
            }
            "kvm_nested_vmexit_inject" => {
                c.nested_vmexit_inject += 1;
                bump(&mut c.reflected_by_reason);
            }
            "kvm_nested_vmenter" => c.nested_vmenter += 1,
            "kvm_nested_vmenter_failed" => {
                if c.vmenter_failed.len() < MAX_FAILED_CHECKS {
                    c.vmenter_failed.push(l.text.trim().to_owned());
                }
            }
            _ => c.other_lines += 1,
        }
    }
    // kvm_exit fires for L2's exits too (each also has a kvm_nested_vmexit): take those out
    // of the L1 figures, reason by reason.
    for (r, n) in &c.l2_exits_by_reason {
        if let Some(v) = c.l1_exits_by_reason.get_mut(r) {
            *v = v.saturating_sub(*n);
        }
    }
    c.l1_exits_by_reason.retain(|_, v| *v > 0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_tid_event_and_text() {
        let l = line("        l0-vcpu0-4242    [001] d..1.   123.456789: kvm_exit: vcpu 0 reason HLT rip 0x1000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000").unwrap();
        assert_eq!((l.tid, l.event), (4242, "kvm_exit"));
        assert_eq!(reason(l.text), Some("HLT"));
        let inject = "reason: IO_INSTRUCTION ext_inf1: 0x0000000000e00043 ext_inf2: 0x0000000000000000 ext_int: 0x00000000 ext_int_err: 0x00000000";
        assert_eq!(reason(inject), Some("IO_INSTRUCTION"));
        assert_eq!(line("# tracer: nop"), None);
        let failed = "  l0-vcpu0-77 [000] ..... 9.5: kvm_nested_vmenter_failed: control->asid == 0\n";
        assert_eq!(count(failed, Some(77)).vmenter_failed, ["control->asid == 0"]);
        assert_eq!(line("garbage"), None);
    }
}
