//! The one list of LION's tasks: what a request asks the model for, its name on the wire and on
//! the command line, and its router route.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::adapter::Route;

/// What a request asks LION for. One task picks the instruction text (`prompt::PromptTemplates`),
/// the router row ([`Task::route`]) and, for REC, the box reading of the answer (`bbox`).
///
/// Names (serde, `FromStr`, `Display`, CLI values): `caption`, `vqa`, `rec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Image captioning.
    Caption,
    /// Visual question answering.
    Vqa,
    /// Referring expression comprehension (grounding): the answer is a box.
    Rec,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Caption, Task::Vqa, Task::Rec];

    /// The task's name: `caption`, `vqa`, `rec`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Caption => "caption",
            Task::Vqa => "vqa",
            Task::Rec => "rec",
        }
    }

    /// LION's `category`: REC is region-level, everything else image-level.
    pub fn is_region_level(self) -> bool {
        matches!(self, Task::Rec)
    }

    /// LION's router row for the task.
    pub fn route(self) -> Route {
        if self.is_region_level() {
            Route::RegionLevel
        } else {
            Route::ImageLevel
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown task name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {0:?}: expected caption, vqa or rec")]
pub struct UnknownTask(pub String);

impl FromStr for Task {
    type Err = UnknownTask;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_serde_and_route_agree() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>(), Ok(t));
            assert_eq!(t.to_string(), t.name());
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
            assert_eq!(
                serde_json::from_str::<Task>(&format!("\"{}\"", t.name())).unwrap(),
                t
            );
        }
        assert_eq!(Task::Rec.route(), Route::RegionLevel);
        assert_eq!(Task::Caption.route(), Route::ImageLevel);
        assert_eq!(Task::Vqa.route(), Route::ImageLevel);
        let e = "ground".parse::<Task>().unwrap_err();
        assert!(e.to_string().contains("\"ground\""), "{e}");
    }
}
