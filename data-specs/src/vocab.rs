//! Label and device vocabularies.
//!
//! The TAU Urban Acoustic Scenes 2022 Mobile order is the default. A dataset with other labels
//! (another ASC corpus) gets its vocabulary from its own `meta.csv`; the vocabulary used to build
//! a shard set is stored in the shard metadata, so a label index is always interpretable.

use serde::{Deserialize, Serialize};

/// The ten TAU22 scene labels in the official order (index 0-9).
pub const TAU22_LABELS: [&str; 10] = [
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
];

/// The nine TAU22 recording devices: `a` is the reference device, `b`, `c` real devices,
/// `s1`-`s6` simulated devices (`s4`-`s6` appear only in the test set).
pub const TAU22_DEVICES: [&str; 9] = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"];

/// Devices that never appear in the TAU22 training split.
pub const TAU22_UNSEEN_DEVICES: [&str; 3] = ["s4", "s5", "s6"];

/// The reference device: the only one DIR augmentation is applied to.
pub const REFERENCE_DEVICE: &str = "a";

/// An ordered list of names; the position of a name is its index in the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Vocabulary(pub Vec<String>);

impl Vocabulary {
    /// The TAU22 scene labels in the official order.
    pub fn tau22_labels() -> Self {
        Self(TAU22_LABELS.iter().map(|s| s.to_string()).collect())
    }

    /// The TAU22 devices in the official order.
    pub fn tau22_devices() -> Self {
        Self(TAU22_DEVICES.iter().map(|s| s.to_string()).collect())
    }

    /// Builds a vocabulary from the names seen in a dataset. If every name belongs to
    /// `canonical` (e.g. [`TAU22_LABELS`]), the canonical list is returned whole and in its
    /// order, so that TAU subsets keep the official indices; otherwise the distinct names are
    /// sorted alphabetically.
    pub fn from_observed<'a>(names: impl IntoIterator<Item = &'a str>, canonical: &[&str]) -> Self {
        let mut seen: Vec<String> = names.into_iter().map(str::to_string).collect();
        seen.sort();
        seen.dedup();
        if seen.iter().all(|n| canonical.contains(&n.as_str())) {
            Self(canonical.iter().map(|s| s.to_string()).collect())
        } else {
            Self(seen)
        }
    }

    /// Index of `name`, if present.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| n == name)
    }

    /// Name at `index`, if present.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the vocabulary has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names in index order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Parses a TAU-style audio file name `<scene>-<city>-<location>-<segment>-<index>-<device>.wav`
/// (a leading `audio/` and the extension are optional).
///
/// The scene may itself contain `_` but never `-`; the device is the text after the last `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TauFileName {
    /// Scene label, e.g. `airport`.
    pub scene: String,
    /// City, e.g. `barcelona`.
    pub city: String,
    /// Location id within the city, e.g. `203`.
    pub location: String,
    /// Id of the 10 s segment, e.g. `6129`.
    pub segment: String,
    /// Second within the 10 s segment (0-9).
    pub index: u32,
    /// Device, e.g. `a` or `s4`.
    pub device: String,
}

impl TauFileName {
    /// Parses a file name; `None` when it does not have the six TAU fields.
    pub fn parse(path: &str) -> Option<Self> {
        let base = path.rsplit('/').next()?;
        let stem = base.strip_suffix(".wav").unwrap_or(base);
        let parts: Vec<&str> = stem.split('-').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Self {
            scene: parts[0].to_string(),
            city: parts[1].to_string(),
            location: parts[2].to_string(),
            segment: parts[3].to_string(),
            index: parts[4].parse().ok()?,
            device: parts[5].to_string(),
        })
    }

    /// Identifier of the 10 s segment: `<scene>-<city>-<location>-<segment>`. The ten one-second
    /// clips of a segment share it, and so do the simultaneous recordings of other devices.
    pub fn segment_id(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.scene, self.city, self.location, self.segment
        )
    }

    /// The file name without folder: `<scene>-<city>-<location>-<segment>-<index>-<device>.wav`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}-{}.wav",
            self.scene, self.city, self.location, self.segment, self.index, self.device
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tau_file_names() {
        let f = TauFileName::parse("audio/street_pedestrian-lyon-1162-44650-3-s4.wav").unwrap();
        assert_eq!(f.scene, "street_pedestrian");
        assert_eq!(f.city, "lyon");
        assert_eq!(f.location, "1162");
        assert_eq!(f.segment, "44650");
        assert_eq!(f.index, 3);
        assert_eq!(f.device, "s4");
        assert_eq!(f.segment_id(), "street_pedestrian-lyon-1162-44650");
        assert_eq!(f.file_name(), "street_pedestrian-lyon-1162-44650-3-s4.wav");
        assert!(TauFileName::parse("audio/foo-bar.wav").is_none());
        assert!(TauFileName::parse("a-b-c-d-x-a.wav").is_none());
    }

    #[test]
    fn vocabulary_keeps_tau_order_for_tau_subsets() {
        let v = Vocabulary::from_observed(["tram", "bus", "airport"], &TAU22_LABELS);
        assert_eq!(v, Vocabulary::tau22_labels());
        assert_eq!(v.index_of("tram"), Some(9));
        let other = Vocabulary::from_observed(["office", "home", "office"], &TAU22_LABELS);
        assert_eq!(other.0, vec!["home", "office"]);
    }
}
