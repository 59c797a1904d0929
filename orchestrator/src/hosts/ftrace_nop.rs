//! Do offline what the kernel does to a module's ftrace call sites when it loads it.
//!
//! Every function of a module built with dynamic ftrace starts with `call __fentry__`; the
//! module lists those sites in its `__mcount_loc` section, and at load time the kernel turns
//! each into the 5-byte NOP `0f 1f 44 00 00` (`ftrace_nop_initialize()`), then checks each
//! against the module's symbols (`ftrace_module_enable()` -> `test_for_valid_rec()`, a
//! kallsyms lookup per site). Inside Bochs that second step is most of `insmod kvm`: 2.2 of
//! 2.4 emulated seconds on 6.1, 3.4 s on 6.12. Writing the same NOPs here, dropping the
//! call's relocation (R_X86_64_NONE) and renaming `__mcount_loc` so the kernel finds no
//! sites gives the kernel the same module text it would have made itself (checked through
//! /proc/kcore: byte-identical executable sections); what is lost is ftrace function tracing
//! of these modules, which nestbench does not use (its tracepoints are unaffected).
//!
//! ELF64 little-endian relocatable objects only; anything unexpected leaves the module as it
//! was (the kernel then does the work).

const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const SHT_RELA: u32 = 4;
const R_X86_64_NONE: u64 = 0;
const R_X86_64_64: u64 = 1;
const R_X86_64_PC32: u64 = 2;
const R_X86_64_PLT32: u64 = 4;
const MCOUNT: &[u8] = b"__mcount_loc";
/// What `__mcount_loc` is renamed to (same length: the section-name table keeps its size).
const RENAMED: &[u8] = b"__mcount_nop";

struct Section {
    name: usize,
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
    info: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?)))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn sections(b: &[u8]) -> Option<Vec<Section>> {
    if b.get(..6)? != b"\x7fELF\x02\x01" || u16_at(b, 0x10)? != 1 || u16_at(b, 0x12)? != 62 {
        return None; // not ELF64 LE, ET_REL, x86-64
    }
    let (shoff, shentsize, shnum) = (usize::try_from(u64_at(b, 0x28)?).ok()?, u16_at(b, 0x3A)?, u16_at(b, 0x3C)?);
    (0..shnum)
        .map(|i| {
            let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
            let s = Section {
                name: u32_at(b, h)? as usize,
                kind: u32_at(b, h + 4)?,
                offset: usize::try_from(u64_at(b, h + 24)?).ok()?,
                size: usize::try_from(u64_at(b, h + 32)?).ok()?,
                link: u32_at(b, h + 40)? as usize,
                info: u32_at(b, h + 44)? as usize,
            };
            (s.offset.checked_add(s.size)? <= b.len() || s.kind == 8/* NOBITS */).then_some(s)
        })
        .collect()
}

fn name_at<'a>(b: &'a [u8], strtab: &Section, at: usize) -> Option<&'a [u8]> {
    let s = b.get(strtab.offset.checked_add(at)?..strtab.offset + strtab.size)?;
    Some(&s[..s.iter().position(|&c| c == 0)?])
}

/// `ko` with its ftrace call sites turned into NOPs, and how many; `None` (leave it as it
/// is) for anything this does not recognise.
#[must_use]
pub fn nop_ftrace_sites(ko: &[u8]) -> Option<(Vec<u8>, usize)> {
    let secs = sections(ko)?;
    let shstr = secs.get(u16_at(ko, 0x3E)?)?;
    let mcount = secs.iter().position(|s| name_at(ko, shstr, s.name) == Some(MCOUNT))?;
    let rela = secs.iter().find(|s| s.kind == SHT_RELA && s.info == mcount)?;
    let symtab = secs.get(rela.link)?;
    let strtab = secs.get(symtab.link)?;
    let mut out = ko.to_vec();
    let mut sites = 0;
    for r in 0..rela.size / 24 {
        let e = rela.offset + r * 24;
        let (info, addend) = (u64_at(ko, e + 8)?, u64_at(ko, e + 16)? as i64);
        if info & 0xffff_ffff != R_X86_64_64 {
            return None;
        }
        let sym = symtab.offset + usize::try_from(info >> 32).ok()? * 24;
        let (shndx, value) = (u16_at(ko, sym + 6)?, u64_at(ko, sym + 8)?);
        let target = secs.get(shndx)?;
        let site = usize::try_from(i64::try_from(value).ok()?.checked_add(addend)?).ok()?;
        if site + 5 > target.size || ko[target.offset + site] != 0xe8 {
            return None;
        }
        // The call's relocation: in the RELA section of `target`, at site + 1, to __fentry__.
        let calls = secs.iter().find(|s| s.kind == SHT_RELA && s.info == shndx && s.link == rela.link)?;
        let call =
            (0..calls.size / 24).map(|k| calls.offset + k * 24).find(|&c| u64_at(ko, c) == Some(site as u64 + 1))?;
        let cinfo = u64_at(ko, call + 8)?;
        let csym = symtab.offset + usize::try_from(cinfo >> 32).ok()? * 24;
        let cname = name_at(ko, strtab, u32_at(ko, csym)? as usize)?;
        if cname != b"__fentry__" || ![R_X86_64_PC32, R_X86_64_PLT32].contains(&(cinfo & 0xffff_ffff)) {
            return None;
        }
        out[call + 8..call + 16].copy_from_slice(&((cinfo & !0xffff_ffff) | R_X86_64_NONE).to_le_bytes());
        out[target.offset + site..target.offset + site + 5].copy_from_slice(&NOP5);
        sites += 1;
    }
    let name = shstr.offset + secs[mcount].name;
    out[name..name + MCOUNT.len()].copy_from_slice(RENAMED);
    Some((out, sites))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_module_with_ftrace_sites_is_left_alone() {
        assert_eq!(nop_ftrace_sites(b"not an elf"), None);
        assert_eq!(nop_ftrace_sites(b"\x7fELF\x02\x01\x01\x00"), None);
    }

    #[test]
    fn the_cached_kvm_module_gets_every_site_nopped_and_nothing_else_changes() {
        let Ok(k) = super::super::kernel::resolve("6.1", None) else {
            eprintln!("SKIP: kernel 6.1 is not in the kernel cache (./setup.sh fetches it)");
            return;
        };
        let ko = super::super::kernel::module_bytes(&k.modules.kvm).unwrap();
        let (out, sites) = nop_ftrace_sites(&ko).expect("kvm.ko has ftrace sites");
        assert!(sites > 1000, "{sites}");
        assert_eq!(out.len(), ko.len());
        let nops = out.windows(5).filter(|w| *w == NOP5).count() - ko.windows(5).filter(|w| *w == NOP5).count();
        assert_eq!(nops, sites);
        let secs = sections(&out).unwrap();
        let shstr = &secs[u16_at(&out, 0x3E).unwrap()];
        assert!(secs.iter().all(|s| name_at(&out, shstr, s.name) != Some(MCOUNT)), "the kernel finds no __mcount_loc");
        let changed = ko.iter().zip(&out).filter(|(a, b)| a != b).count();
        assert!(changed <= sites * 9 + MCOUNT.len(), "only call bytes, relocation types and the name: {changed}");
    }
}
