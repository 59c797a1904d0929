//! The orchestrator behind the `nestbench` command: supervising `nestbench-l0` children,
//! exit traces, runs, the bench matrix, results, comparisons and exports. The command line
//! itself is `src/main.rs`; the modules are a library so that benches and tests reach them.

pub mod bench;
pub mod boot;
pub mod compare;
pub mod dashboard;
pub mod doctor;
pub mod exact;
pub mod export;
pub mod hosts;
pub mod interrupt;
pub mod journal;
pub mod l0_child;
pub mod report;
pub mod results;
pub mod run;
pub mod schema;
pub mod trace;
pub mod vmentry;
