//! The bench's journal: one JSON line per finished calibration, repetition and steady-state
//! run, appended and fsync'd as it happens (`OUT/<run id>.journal.jsonl` while the bench runs,
//! `journal.jsonl` in the run directory after), and `bench --resume`, which reads it back so
//! that a bench that was killed or interrupted measures only what it had not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::results::{CalibrationStep, ExitMultiplication, Exits, PerLevel, Repetition};

/// One line of the journal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// The first line: what the bench measures and where.
    Bench {
        /// The run id.
        run_id: String,
        /// `--quick`.
        quick: bool,
        /// `--engines` (`null`: every one the host can run).
        engines: Option<Vec<String>>,
        /// `--payloads` (`null`: all).
        payloads: Option<Vec<String>>,
        /// The host class (CPU model / KVM module / CPUs).
        host_class: String,
        /// The kernel release.
        kernel: String,
    },
    /// A configuration's calibration (its warm-up) finished.
    Calibrated {
        /// The configuration.
        id: String,
        /// The iterations of its repetitions.
        iterations: u64,
        /// The calibration runs.
        calibration: Vec<CalibrationStep>,
    },
    /// A measured repetition, with its exit counts.
    Repetition {
        /// The configuration.
        id: String,
        /// The repetition.
        repetition: Repetition,
        /// Its exits (journals of older benches have none).
        #[serde(default)]
        exits: Option<Exits>,
        /// Its exit multiplication.
        #[serde(default)]
        exit_multiplication: Option<ExitMultiplication>,
        /// KVM's `insn_emulation` of L1's vCPU.
        #[serde(default)]
        kvm_insn_emulation: Option<u64>,
    },
    /// A steady-state run (half the iterations), with its counts.
    SteadyRun {
        /// The configuration.
        id: String,
        /// The run.
        repetition: Repetition,
        /// Its exit counts per level.
        #[serde(default)]
        per_level: Option<PerLevel>,
    },
    /// A configuration failed.
    Error {
        /// The configuration.
        id: String,
        /// Why.
        error: String,
    },
}

/// What a journal says one configuration had finished.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    /// Its calibration: iterations and runs.
    pub calibrated: Option<(u64, Vec<CalibrationStep>)>,
    /// Its repetitions, in order, each with its counts.
    pub repetitions: Vec<Line>,
    /// Its steady-state runs.
    pub steady: Vec<(Repetition, PerLevel)>,
    /// It failed: a resumed bench measures it again from the start.
    pub failed: bool,
}

/// A journal read back for `bench --resume`.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Where it was read from.
    pub path: PathBuf,
    /// The run it journals.
    pub run_id: String,
    /// Its `--quick`.
    pub quick: bool,
    /// Its `--engines`.
    pub engines: Option<Vec<String>>,
    /// Its `--payloads`.
    pub payloads: Option<Vec<String>>,
    /// Its host class and kernel (a resumed bench must run on the same).
    pub host_class: String,
    /// Its kernel release.
    pub kernel: String,
    /// What each configuration had finished.
    pub done: BTreeMap<String, Done>,
    /// Lines that could not be read (the last one, torn by a crash, at most).
    pub unreadable: usize,
}

/// Why a journal cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Not readable.
    #[error("--resume {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its first line is not the bench's.
    #[error(
        "--resume {0}: not a bench journal (its first line does not describe a bench; journals of benches before --resume existed cannot be resumed)"
    )]
    NoHeader(PathBuf),
    /// A line in the middle is damaged.
    #[error("--resume {path}: line {line} is not a journal line: {why}")]
    Damaged {
        /// The path.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// The parser's message.
        why: String,
    },
}

impl Resumed {
    /// Read a journal: `OUT/<run id>.journal.jsonl`, or a run directory holding `journal.jsonl`
    /// (a partial run). A torn last line is skipped and counted; a damaged line elsewhere is
    /// an error.
    pub fn read(path: &Path) -> Result<Self, ResumeError> {
        let file = if path.is_dir() { path.join("journal.jsonl") } else { path.to_owned() };
        let text = std::fs::read_to_string(&file).map_err(|source| ResumeError::Io { path: file.clone(), source })?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut parsed = Vec::new();
        let mut unreadable = 0;
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str::<Line>(l) {
                Ok(x) => parsed.push(x),
                Err(_) if i + 1 == lines.len() => unreadable += 1,
                Err(e) => return Err(ResumeError::Damaged { path: file, line: i + 1, why: e.to_string() }),
            }
        }
        let Some(Line::Bench { run_id, quick, engines, payloads, host_class, kernel }) = parsed.first().cloned() else {
            return Err(ResumeError::NoHeader(file));
        };
        let mut done: BTreeMap<String, Done> = BTreeMap::new();
        for l in parsed.into_iter().skip(1) {
            match &l {
                Line::Bench { .. } => {}
                Line::Calibrated { id, iterations, calibration } => {
                    done.entry(id.clone()).or_default().calibrated = Some((*iterations, calibration.clone()));
                }
                Line::Repetition { id, .. } => done.entry(id.clone()).or_default().repetitions.push(l.clone()),
                Line::SteadyRun { id, repetition, per_level } => {
                    if let Some(p) = per_level {
                        done.entry(id.clone()).or_default().steady.push((repetition.clone(), p.clone()));
                    }
                }
                // A child killed or interrupted is not the configuration's failure: what it
                // had finished is reused. Any other error measures it again from the start.
                Line::Error { id, error } if !crate::bench::stream_incomplete(error) => {
                    done.entry(id.clone()).or_default().failed = true;
                }
                Line::Error { .. } => {}
            }
        }
        // A failed configuration starts over; so does one whose repetitions lack their counts.
        for d in done.values_mut() {
            let counted = d.repetitions.iter().all(|l| matches!(l, Line::Repetition { exits: Some(_), .. }));
            if d.failed || !counted || d.calibrated.is_none() {
                *d = Done { failed: d.failed, ..Done::default() };
            }
        }
        Ok(Self { path: file, run_id, quick, engines, payloads, host_class, kernel, done, unreadable })
    }

    /// What the journal had finished for configuration `id` (`None`: nothing to reuse).
    #[must_use]
    pub fn done(&self, id: &str) -> Option<&Done> {
        self.done.get(id).filter(|d| !d.failed && d.calibrated.is_some())
    }

    /// One line for the terminal: what is reused.
    #[must_use]
    pub fn describe(&self) -> String {
        let reused: Vec<&Done> = self.done.values().filter(|d| !d.failed && d.calibrated.is_some()).collect();
        format!(
            "resuming {} from {}: {} configurations calibrated, {} repetitions and {} steady-state runs reused{}",
            self.run_id,
            self.path.display(),
            reused.len(),
            reused.iter().map(|d| d.repetitions.len()).sum::<usize>(),
            reused.iter().map(|d| d.steady.len()).sum::<usize>(),
            if self.unreadable > 0 { " (its torn last line skipped)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(n: u64) -> Repetition {
        Repetition {
            iterations: n,
            mean: 10.0,
            min: 9,
            max: 12,
            total: 10 * n,
            histogram_log2: vec![[3, n]],
            wall_ns: Some(1000),
            started_s: 1.0,
            exits: n,
            layers: None,
        }
    }

    fn exits() -> Exits {
        Exits {
            l2_by_reason: [("IO_INSTRUCTION".to_owned(), 8)].into(),
            reflected_by_reason: BTreeMap::new(),
            per_level: PerLevel::default(),
            kvm_by_kind: BTreeMap::new(),
            stable_across_repetitions: true,
        }
    }

    fn header() -> Line {
        Line::Bench {
            run_id: "r1".into(),
            quick: true,
            engines: Some(vec!["soft".into()]),
            payloads: None,
            host_class: "cpu / kvm_pvm / 2 cpus".into(),
            kernel: "6.18".into(),
        }
    }

    fn write(dir: &Path, lines: &[Line], tail: &str) -> PathBuf {
        let p = dir.join("r1.journal.jsonl");
        let mut t: String = lines.iter().map(|l| format!("{}\n", serde_json::to_string(l).unwrap())).collect();
        t.push_str(tail);
        std::fs::write(&p, t).unwrap();
        p
    }

    #[test]
    fn a_journal_reads_back_what_each_configuration_finished() {
        let dir = std::env::temp_dir().join(format!("nestbench-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let calibrated = |id: &str| Line::Calibrated {
            id: id.into(),
            iterations: 8,
            calibration: vec![CalibrationStep { iterations: 8, total: 80 }],
        };
        let repetition = |id: &str| Line::Repetition {
            id: id.into(),
            repetition: rep(8),
            exits: Some(exits()),
            exit_multiplication: None,
            kvm_insn_emulation: Some(3),
        };
        let lines = [
            header(),
            calibrated("soft/outl/shadowing-on"),
            calibrated("soft/hlt/shadowing-on"),
            calibrated("soft/rdmsr/shadowing-on"),
            repetition("soft/outl/shadowing-on"),
            repetition("soft/hlt/shadowing-on"),
            repetition("soft/outl/shadowing-on"),
            Line::Error { id: "soft/hlt/shadowing-on".into(), error: "status 1".into() },
            Line::SteadyRun {
                id: "soft/outl/shadowing-on".into(),
                repetition: rep(4),
                per_level: Some(PerLevel::default()),
            },
        ];
        // A crash tore the last line.
        let p = write(&dir, &lines, r#"{"kind":"repetition","id":"soft/rdm"#);
        let r = Resumed::read(&p).unwrap();
        assert_eq!((r.run_id.as_str(), r.quick, r.unreadable), ("r1", true, 1));
        let outl = r.done("soft/outl/shadowing-on").unwrap();
        assert_eq!((outl.calibrated.as_ref().unwrap().0, outl.repetitions.len(), outl.steady.len()), (8, 2, 1));
        assert!(r.done("soft/hlt/shadowing-on").is_none(), "a failed configuration starts over");
        assert_eq!(r.done("soft/rdmsr/shadowing-on").unwrap().repetitions.len(), 0);
        assert!(r.describe().contains("2 configurations calibrated, 2 repetitions and 1 steady-state runs reused"));
        assert!(r.describe().contains("torn last line"));

        // A damaged line in the middle, or no header: errors that name the file.
        let p = write(&dir, &[header()], "garbage\n{\"kind\":\"error\",\"id\":\"x\",\"error\":\"e\"}\n");
        let e = Resumed::read(&p).unwrap_err().to_string();
        assert!(e.contains("r1.journal.jsonl") && e.contains("line 2"), "{e}");
        let p = write(&dir, &[calibrated("x")], "");
        assert!(matches!(Resumed::read(&p), Err(ResumeError::NoHeader(_))));
        let e = anyhow::Error::from(Resumed::read(&dir.join("missing")).unwrap_err());
        assert_eq!(format!("{e:#}").matches("No such file").count(), 1, "{e:#}");
        assert!(format!("{e:#}").starts_with("--resume ") && e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
