//! VM-entry conformance cases as files (docs/vmentry.md, `vmentry/case.schema.json`): parse
//! and check a case document, and turn it into the ABI case L1 runs
//! ([`nestbench_abi::vmentry::Case`]). Every field is checked against the VMCS field table:
//! an unknown encoding, a write to a read-only field, an operand wider than its field, or a
//! step this version does not know is an error naming it.

use nestbench_abi::vmcs::{self, FieldWidth};
use nestbench_abi::vmentry::{
    CASE_MAGIC, Case, CaseWrite, MAX_MSR_LOADS, MAX_STEPS, MAX_WRITES, MsrLoad, Step, WriteOp, need,
};
use serde::{Deserialize, Serialize};

/// Why a case file is refused.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// Not JSON, or not the documented shape.
    #[error("{path}: not a VM-entry case: {why}")]
    Format {
        /// The file.
        path: String,
        /// serde's or our reason.
        why: String,
    },
    /// A value in the case is wrong.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What, naming the field.
        why: String,
    },
}

/// A number written as JSON number or as a string (hex with `0x`, or decimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Num {
    /// A JSON number.
    Int(u64),
    /// A string.
    Text(#[serde(with = "text_num")] u64),
}

mod text_num {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let t = String::deserialize(d)?;
        let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
            None => t.replace('_', "").parse(),
        };
        r.map_err(|e| serde::de::Error::custom(format!("{t:?} is not a number: {e}")))
    }
}

impl Num {
    /// The value.
    #[must_use]
    pub fn get(self) -> u64 {
        match self {
            Self::Int(v) | Self::Text(v) => v,
        }
    }
}

/// One write: `field` and exactly one of `value`, `or`, `and_not`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriteDoc {
    /// The field's encoding (SDM Appendix B), e.g. `"0x6820"`.
    pub field: Num,
    /// The new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Num>,
    /// Bits to set in the baseline value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or: Option<Num>,
    /// Bits to clear in the baseline value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and_not: Option<Num>,
}

/// One VM-entry MSR-load entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MsrLoadDoc {
    /// The MSR index.
    pub index: Num,
    /// The value.
    pub value: Num,
    /// Bits 63:32 of the entry's first quadword (reserved: 0 unless the case breaks them).
    #[serde(default)]
    pub reserved: Option<Num>,
}

/// The documented verdict a case expects on a CPU that follows the SDM (informational: CI
/// compares engines with each other).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExpectDoc {
    /// `entered`, `fail_invalid`, `fail_valid`, `entry_failure`, `succeeded`.
    pub kind: String,
    /// VM-instruction error (fail_valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<u32>,
    /// Exit reason, bit 31 included (entered, entry_failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<Num>,
    /// Exit qualification (entry_failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualification: Option<Num>,
}

/// A case document.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDoc {
    /// Short name.
    pub name: String,
    /// The check family (`execution_controls`, `exit_controls`, `entry_controls`,
    /// `event_injection`, `msr_load`, `host_state`, `guest_state`, `vmcs_link_pointer`,
    /// `vmx_instruction`).
    pub family: String,
    /// The SDM section and the rule it breaks.
    pub sdm: String,
    /// What the case does, in words.
    #[serde(default)]
    pub description: String,
    /// Capabilities it needs: `unrestricted_guest`, `vmcs_shadowing`, `preemption_timer`.
    #[serde(default)]
    pub needs: Vec<String>,
    /// VMCS writes on top of the baseline, in order.
    #[serde(default)]
    pub writes: Vec<WriteDoc>,
    /// VM-entry MSR-load entries (L1 places them and sets the count and address).
    #[serde(default)]
    pub msr_load: Vec<MsrLoadDoc>,
    /// The instructions, by their names in [`Step::NAMES`].
    pub steps: Vec<String>,
    /// What the SDM says should happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectDoc>,
}

/// The check families a case may name.
pub const FAMILIES: [&str; 9] = [
    "execution_controls",
    "exit_controls",
    "entry_controls",
    "event_injection",
    "msr_load",
    "host_state",
    "guest_state",
    "vmcs_link_pointer",
    "vmx_instruction",
];

fn need_bit(name: &str) -> Option<u32> {
    need::NAMES.iter().find(|(_, n)| *n == name).map(|(bit, _)| *bit)
}

/// Parse `text` (from `path`, for messages) into a checked case document.
pub fn parse(path: &str, text: &str) -> Result<CaseDoc, CaseError> {
    let doc: CaseDoc =
        serde_json::from_str(text).map_err(|e| CaseError::Format { path: path.into(), why: e.to_string() })?;
    doc.to_abi().map_err(|why| CaseError::Invalid { path: path.into(), why })?;
    Ok(doc)
}

impl CaseDoc {
    /// The ABI case, or what is wrong with the document.
    pub fn to_abi(&self) -> Result<Case, String> {
        if !FAMILIES.contains(&self.family.as_str()) {
            return Err(format!("family {:?} is not one of {}", self.family, FAMILIES.join(", ")));
        }
        if self.writes.len() > MAX_WRITES || self.msr_load.len() > MAX_MSR_LOADS {
            return Err(format!("at most {MAX_WRITES} writes and {MAX_MSR_LOADS} MSR-load entries"));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(format!("steps: 1 to {MAX_STEPS} instructions, got {}", self.steps.len()));
        }
        let mut c = Case {
            magic: CASE_MAGIC,
            n_writes: self.writes.len() as u32,
            n_steps: self.steps.len() as u32,
            n_msr_loads: self.msr_load.len() as u32,
            ..Case::default()
        };
        for n in &self.needs {
            c.needs |= need_bit(n).ok_or_else(|| {
                format!("needs: unknown capability {n:?} (unrestricted_guest, vmcs_shadowing, preemption_timer)")
            })?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            c.steps[i] = Step::from_name(s).ok_or_else(|| format!("steps[{i}]: unknown instruction {s:?}"))? as u32;
        }
        for (i, w) in self.writes.iter().enumerate() {
            let enc64 = w.field.get();
            let enc =
                u32::try_from(enc64).map_err(|_| format!("writes[{i}]: field {enc64:#x} is not a VMCS encoding"))?;
            let (info, high) = vmcs::ALL
                .iter()
                .find_map(|f| {
                    if f.encoding == enc {
                        Some((f, false))
                    } else if f.high_encoding() == Some(enc) {
                        Some((f, true))
                    } else {
                        None
                    }
                })
                .ok_or_else(|| {
                    format!("writes[{i}]: field {enc:#x} is not a VMCS field this version knows (SDM Appendix B)")
                })?;
            if vmcs::is_read_only(enc) {
                return Err(format!(
                    "writes[{i}]: field {enc:#x} ({}) is read-only (a VM-exit information field)",
                    info.name
                ));
            }
            let (op, value) = match (w.value, w.or, w.and_not) {
                (Some(v), None, None) => (WriteOp::Set, v.get()),
                (None, Some(v), None) => (WriteOp::Or, v.get()),
                (None, None, Some(v)) => (WriteOp::AndNot, v.get()),
                _ => return Err(format!("writes[{i}] ({}): give exactly one of value, or, and_not", info.name)),
            };
            let bits = if high {
                32
            } else {
                match info.width {
                    FieldWidth::Bits16 => 16,
                    FieldWidth::Bits32 => 32,
                    FieldWidth::Bits64 | FieldWidth::Natural => 64,
                }
            };
            if bits < 64 && value >> bits != 0 {
                return Err(format!("writes[{i}] ({}): {value:#x} does not fit the {bits}-bit field", info.name));
            }
            c.writes[i] = CaseWrite { encoding: enc, op: op as u32, value };
        }
        for (i, m) in self.msr_load.iter().enumerate() {
            let index =
                u32::try_from(m.index.get()).map_err(|_| format!("msr_load[{i}]: index is wider than 32 bits"))?;
            let reserved = u32::try_from(m.reserved.map_or(0, Num::get))
                .map_err(|_| format!("msr_load[{i}]: reserved is wider than 32 bits"))?;
            c.msr_loads[i] = MsrLoad { index, reserved, value: m.value.get() };
        }
        debug_assert!(c.well_formed());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("t.json", text).unwrap_err().to_string()
    }

    #[test]
    fn the_schema_names_every_step() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../vmentry/case.schema.json")).expect("the schema is JSON");
        let names: Vec<&str> = schema["properties"]["steps"]["items"]["enum"]
            .as_array()
            .expect("steps.items.enum")
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let ours: Vec<&str> = Step::NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(names, ours);
    }

    #[test]
    fn a_case_becomes_the_abi_case() {
        let c = parse(
            "t.json",
            r#"{"name": "rflags", "family": "guest_state", "sdm": "27.3.1.4", "writes": [{"field": "0x6820", "and_not": "0x2"}, {"field": 16416, "value": 1}], "steps": ["vmlaunch"], "needs": ["vmcs_shadowing"]}"#,
        )
        .unwrap()
        .to_abi()
        .unwrap();
        assert_eq!((c.n_writes, c.n_steps, c.needs), (2, 1, need::VMCS_SHADOWING));
        assert_eq!(c.writes[0], CaseWrite { encoding: 0x6820, op: WriteOp::AndNot as u32, value: 2 });
        assert_eq!(c.writes[1].encoding, 0x4020);
        assert!(c.well_formed());
    }

    #[test]
    fn malformed_cases_are_refused_naming_the_problem() {
        assert!(err("{").contains("not a VM-entry case"));
        assert!(err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x1234","value":0}]}"#).contains("0x1234 is not a VMCS field"));
        assert!(err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x4402","value":0}]}"#).contains("read-only"));
        assert!(err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x6820","value":1,"or":2}]}"#).contains("exactly one of"));
        assert!(err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x0800","value":"0x10000"}]}"#).contains("16-bit"));
        assert!(err(r#"{"name":"x","family":"nope","sdm":"s","steps":["vmlaunch"]}"#).contains("family"));
        assert!(
            err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["jump"]}"#).contains("unknown instruction")
        );
        assert!(err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":[]}"#).contains("1 to"));
        assert!(
            err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"bogus":1}"#)
                .contains("unknown field")
        );
        assert!(
            err(r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"needs":["pml"]}"#)
                .contains("unknown capability")
        );
    }
}
