//! The library side of `lion demo`: its intermediate [`files`], the trivial [`baselines`], the
//! [`stage`] records that decide whether a rerun may reuse a stage, the [`kinds`] of test items
//! for the breakdown, the main [`report`] table and curves, and the multi-seed [`compare`]ison of the prompt kinds and ablations
//! ([`systems`]) with its generated conclusions.

pub mod baselines;
pub mod compare;
pub mod files;
pub mod kinds;
pub mod report;
pub mod stage;
pub mod systems;
