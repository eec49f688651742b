//! Loading and validating a topology file into the compiled, immutable
//! [`Topology`] both binaries resolve against.
//!
//! Invariant: a [`Topology`] only exists validated; every problem found is
//! reported at once, each naming the file, the JSON path and the fix, and
//! nothing of an invalid file is ever used.

use crate::lookback::LookBack;
use crate::model::{ChannelDef, FilterDef, TopologyFile};
use crate::resolve::{FEATURE_NAMES, PRODUCT_CODES};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The placeholder replaced by each matching scope value.
pub const PLACEHOLDER: &str = "[ScopeValue]";

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub problem: String,
    pub fix: String,
}

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{source_name}: cannot read: {error}")]
    Io {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: {path}: {message} (fix: {fix})")]
    Parse {
        source_name: String,
        path: String,
        message: String,
        fix: String,
    },
    #[error("{}", render(source_name, issues))]
    Invalid {
        source_name: String,
        issues: Vec<Issue>,
    },
}

fn render(source: &str, issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("{source}: {}: {} (fix: {})", i.path, i.problem, i.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Accepted values of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accept {
    Any,
    Only(HashSet<String>),
}

impl Accept {
    pub(crate) fn accepts(&self, v: &str) -> bool {
        match self {
            Accept::Any => true,
            Accept::Only(set) => set.contains(v),
        }
    }

    fn merge(a: Option<Accept>, b: &FilterDef) -> Accept {
        let wildcard = b.values.iter().any(|v| v == "*");
        match (a, wildcard) {
            (Some(Accept::Any), _) | (_, true) => Accept::Any,
            (Some(Accept::Only(mut set)), false) => {
                set.extend(b.values.iter().cloned());
                Accept::Only(set)
            }
            (None, false) => Accept::Only(b.values.iter().cloned().collect()),
        }
    }
}

/// A channel definition, compiled for resolution.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub hub: Arc<str>,
    pub name: String,
    pub topic: String,
    pub publishable: bool,
    pub products: Option<Accept>,
    pub features: Option<Accept>,
    pub lookback: Option<LookBack>,
    pub ephemeral: bool,
    pub retention: Option<Duration>,
}

impl Channel {
    pub(crate) fn has_placeholder(&self) -> bool {
        self.name.contains(PLACEHOLDER)
    }
}

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) channels: Vec<Channel>,
    pub(crate) by_topic: HashMap<String, Vec<usize>>,
    pub(crate) file: TopologyFile,
}

impl Topology {
    /// Loads a `.json`, `.yaml` or `.yml` file (other names: JSON, then YAML).
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Io {
            source_name: source.clone(),
            error,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml_str(&text, &source),
            Some("json") => Self::from_json_str(&text, &source),
            _ => Self::from_json_str(&text, &source)
                .or_else(|json_err| Self::from_yaml_str(&text, &source).map_err(|_| json_err)),
        }
    }

    pub fn from_json_str(text: &str, source: &str) -> Result<Topology, TopologyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: TopologyFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner();
            parse_error(
                source,
                e.path().to_string(),
                format!("{inner} (line {}, column {})", inner.line(), inner.column()),
            )
        })?;
        Self::compile(file, source)
    }

    pub fn from_yaml_str(text: &str, source: &str) -> Result<Topology, TopologyError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let file: TopologyFile = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error(source, e.path().to_string(), e.inner().to_string()))?;
        Self::compile(file, source)
    }

    fn compile(file: TopologyFile, source: &str) -> Result<Topology, TopologyError> {
        let mut issues = Vec::new();
        let mut channels = Vec::new();
        if file.hubs.is_empty() {
            issues.push(Issue {
                path: "Hubs".into(),
                problem: "no hubs".into(),
                fix: "define at least one hub with channels".into(),
            });
        }
        let mut hub_names = HashSet::new();
        for (h, hub) in file.hubs.iter().enumerate() {
            let hp = format!("Hubs[{h}]");
            if hub.name.trim().is_empty() {
                issues.push(issue(
                    &format!("{hp}.Name"),
                    "empty hub name",
                    "give the hub a name",
                ));
            } else if !hub_names.insert(hub.name.as_str()) {
                issues.push(issue(
                    &format!("{hp}.Name"),
                    &format!("duplicate hub name {:?}", hub.name),
                    "give each hub a unique name",
                ));
            }
            let mut collections: HashMap<&str, &[FilterDef]> = HashMap::new();
            for (c, col) in hub.filter_collections.iter().enumerate() {
                let cp = format!("{hp}.FilterCollections[{c}]");
                if collections
                    .insert(col.name.as_str(), &col.filters)
                    .is_some()
                {
                    issues.push(issue(
                        &format!("{cp}.Name"),
                        &format!("duplicate collection name {:?}", col.name),
                        "give each collection a unique name",
                    ));
                }
                for (f, filter) in col.filters.iter().enumerate() {
                    check_filter(filter, &format!("{cp}.Filters[{f}]"), &mut issues);
                }
            }
            let mut names = HashSet::new();
            let hub_name: Arc<str> = hub.name.as_str().into();
            for (i, ch) in hub.channels.iter().enumerate() {
                let p = format!("{hp}.Channels[{i}]");
                if let Some(c) =
                    compile_channel(ch, &p, &hub_name, &collections, &mut names, &mut issues)
                {
                    channels.push(c);
                }
            }
        }
        if !issues.is_empty() {
            return Err(TopologyError::Invalid {
                source_name: source.to_owned(),
                issues,
            });
        }
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in channels.iter().enumerate() {
            by_topic.entry(c.topic.clone()).or_default().push(i);
        }
        Ok(Topology {
            channels,
            by_topic,
            file,
        })
    }

    pub fn has_topic(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// Distinct topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// Number of channel definitions.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The file this topology was loaded from, as parsed.
    pub fn file(&self) -> &TopologyFile {
        &self.file
    }
}

fn issue(path: &str, problem: &str, fix: &str) -> Issue {
    Issue {
        path: path.to_owned(),
        problem: problem.to_owned(),
        fix: fix.to_owned(),
    }
}

fn parse_error(source: &str, path: String, message: String) -> TopologyError {
    let fix = if message.contains("unknown field") {
        "remove the field or correct its spelling (field names are PascalCase, as in the seed: Hubs, Channels, Filters, FilterCollections, LookBack)"
    } else if message.contains("missing field") {
        "add the required field"
    } else {
        "correct the syntax at the given position"
    };
    TopologyError::Parse {
        source_name: source.to_owned(),
        path: if path == "." || path.is_empty() {
            "(document)".into()
        } else {
            path
        },
        message,
        fix: fix.to_owned(),
    }
}

fn check_filter(f: &FilterDef, path: &str, issues: &mut Vec<Issue>) {
    if f.filter_type != PRODUCT_CODES && f.filter_type != FEATURE_NAMES {
        issues.push(issue(
            &format!("{path}.Type"),
            &format!("unknown filter type {:?}", f.filter_type),
            "use \"Product Codes\" or \"Feature Names\"",
        ));
    }
    if f.values.is_empty() {
        issues.push(issue(
            &format!("{path}.Values"),
            "empty Values",
            "list accepted values, or [\"*\"] for any",
        ));
    }
    if f.values.iter().any(|v| v.trim().is_empty()) {
        issues.push(issue(
            &format!("{path}.Values"),
            "an empty value",
            "remove empty strings",
        ));
    }
}

fn compile_channel(
    ch: &ChannelDef,
    p: &str,
    hub: &Arc<str>,
    collections: &HashMap<&str, &[FilterDef]>,
    names: &mut HashSet<String>,
    issues: &mut Vec<Issue>,
) -> Option<Channel> {
    let before = issues.len();
    if ch.name.trim().is_empty() {
        issues.push(issue(
            &format!("{p}.Name"),
            "empty channel name",
            "give the channel a name",
        ));
    } else if !names.insert(ch.name.clone()) {
        issues.push(issue(
            &format!("{p}.Name"),
            &format!("duplicate channel name {:?} in this hub", ch.name),
            "give each channel of a hub a unique name",
        ));
    }
    if ch.topic.trim().is_empty() {
        issues.push(issue(
            &format!("{p}.Topic"),
            "empty topic",
            "name the client-facing topic, e.g. \"News\"",
        ));
    }
    let mut filters: Vec<(String, &FilterDef)> = ch
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("{p}.Filters[{i}]"), f))
        .collect();
    let refs = ch
        .filter_collections
        .iter()
        .chain(ch.filter_collection.iter());
    for (i, name) in refs.enumerate() {
        match collections.get(name.as_str()) {
            Some(fs) => {
                filters.extend(fs.iter().map(|f| (format!("{p} (collection {name:?})"), f)))
            }
            None => issues.push(issue(
                &format!("{p}.FilterCollections[{i}]"),
                &format!("unknown filter collection {name:?}"),
                "define it under the hub's FilterCollections or correct the name",
            )),
        }
    }
    let mut products = None;
    let mut features = None;
    for (fp, f) in &filters {
        check_filter(f, fp, issues);
        if f.filter_type == PRODUCT_CODES {
            products = Some(Accept::merge(products, f));
        } else if f.filter_type == FEATURE_NAMES {
            features = Some(Accept::merge(features, f));
        }
    }
    if ch.name.contains(PLACEHOLDER) && filters.is_empty() {
        issues.push(issue(
            &format!("{p}.Name"),
            "[ScopeValue] placeholder in a channel without filters",
            "add a Filters entry (e.g. {\"Type\": \"Product Codes\", \"Values\": [\"*\"]}) or remove the placeholder",
        ));
    }
    let lookback = match &ch.look_back {
        None => None,
        Some(lb) if !lb.is_enabled => None,
        Some(lb) => {
            let lp = format!("{p}.LookBack");
            match (lb.ttl_period_type.as_deref(), lb.ttl_value) {
                (_, None | Some(0)) => {
                    issues.push(issue(
                        &format!("{lp}.TtlValue"),
                        "enabled lookback without a positive TtlValue",
                        "set TtlValue to 1 or more, or IsEnabled to false",
                    ));
                    None
                }
                (Some("CalendarDay"), Some(n)) => Some(LookBack::CalendarDay(n)),
                (Some("Minutes"), Some(n)) => Some(LookBack::Minutes(n)),
                (other, _) => {
                    issues.push(issue(
                        &format!("{lp}.TtlPeriodType"),
                        &format!("unknown TtlPeriodType {:?}", other.unwrap_or("")),
                        "use \"CalendarDay\" or \"Minutes\"",
                    ));
                    None
                }
            }
        }
    };
    if ch.retention_minutes == Some(0) {
        issues.push(issue(
            &format!("{p}.RetentionMinutes"),
            "zero retention",
            "use a positive number of minutes or leave it out",
        ));
    }
    if ch.ephemeral && (lookback.is_some() || ch.retention_minutes.is_some()) {
        issues.push(issue(
            &format!("{p}.Ephemeral"),
            "an ephemeral channel cannot have LookBack or RetentionMinutes (it is never stored)",
            "remove Ephemeral, or the LookBack / RetentionMinutes",
        ));
    }
    if issues.len() > before {
        return None;
    }
    Some(Channel {
        hub: hub.clone(),
        name: ch.name.clone(),
        topic: ch.topic.clone(),
        publishable: ch.is_publishable_by_user,
        products,
        features,
        lookback,
        ephemeral: ch.ephemeral,
        retention: ch
            .retention_minutes
            .map(|m| Duration::from_secs(u64::from(m) * 60)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed case study's example, verbatim in shape.
    pub(crate) const SEED: &str = r#"{
      "Hubs": [{
        "Name": "Content", "Type": "PubSub",
        "Channels": [
          {"Name": "News-[ScopeValue]", "Topic": "News", "IsPublishableByUser": false,
           "Filters": [{"Type": "Product Codes", "Values": ["*"]}],
           "LookBack": {"IsEnabled": true, "TtlPeriodType": "CalendarDay", "TtlValue": 1}},
          {"Name": "Site Visit Count", "Topic": "SiteVisits", "IsPublishableByUser": false, "Filters": []}
        ],
        "FilterCollections": [{"Name": "AllProducts", "Filters": [{"Type": "Product Codes", "Values": ["*"]}]}]
      }]
    }"#;

    fn err(text: &str) -> String {
        Topology::from_json_str(text, "t.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_seed_shape_loads_unchanged() {
        let t = Topology::from_json_str(SEED, "seed.json").unwrap();
        assert_eq!(t.topics(), vec!["News", "SiteVisits"]);
        assert_eq!(t.channel_count(), 2);
    }

    #[test]
    fn yaml_loads_the_same_shape() {
        let yaml = "Hubs:\n  - Name: Content\n    Channels:\n      - Name: News-[ScopeValue]\n        Topic: News\n        Filters:\n          - Type: Product Codes\n            Values: ['*']\n";
        let t = Topology::from_yaml_str(yaml, "t.yaml").unwrap();
        assert!(t.has_topic("News"));
        let e =
            Topology::from_yaml_str("Hubs:\n  - Name: C\n    Chanels: []\n", "t.yaml").unwrap_err();
        assert!(e.to_string().contains("t.yaml: Hubs[0]"), "{e}");
    }

    #[test]
    fn errors_name_file_path_and_fix() {
        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T","Filters":[{"Type":"Product Code","Values":["*"]}]}]}]}"#,
        );
        assert!(
            e.contains(
                "t.json: Hubs[0].Channels[0].Filters[0].Type: unknown filter type \"Product Code\""
            ),
            "{e}"
        );
        assert!(
            e.contains("fix: use \"Product Codes\" or \"Feature Names\""),
            "{e}"
        );

        let e =
            err(r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N-[ScopeValue]","Topic":"T"}]}]}"#);
        assert!(
            e.contains(
                "Hubs[0].Channels[0].Name: [ScopeValue] placeholder in a channel without filters"
            ),
            "{e}"
        );

        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T"},{"Name":"N","Topic":"U"}]}]}"#,
        );
        assert!(
            e.contains("Hubs[0].Channels[1].Name: duplicate channel name \"N\""),
            "{e}"
        );

        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T","FilterCollections":["Nope"]}]}]}"#,
        );
        assert!(
            e.contains(
                "Hubs[0].Channels[0].FilterCollections[0]: unknown filter collection \"Nope\""
            ),
            "{e}"
        );

        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T","LookBack":{"IsEnabled":true,"TtlPeriodType":"Weeks","TtlValue":1}}]}]}"#,
        );
        assert!(
            e.contains("LookBack.TtlPeriodType: unknown TtlPeriodType \"Weeks\""),
            "{e}"
        );
        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T","LookBack":{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":0}}]}]}"#,
        );
        assert!(e.contains("LookBack.TtlValue"), "{e}");

        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":"T","IsPublishable":true}]}]}"#,
        );
        assert!(e.contains("Hubs[0].Channels[0]"), "{e}");
        assert!(e.contains("unknown field `IsPublishable`"), "{e}");

        let e = err(r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N","Topic":""}]}]}"#);
        assert!(e.contains("Hubs[0].Channels[0].Topic: empty topic"), "{e}");

        let e = err("{\"Hubs\": [");
        assert!(e.contains("line 1"), "{e}");
        // All problems at once.
        let e = err(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"A-[ScopeValue]","Topic":"T"},{"Name":"B","Topic":""}]}]}"#,
        );
        assert_eq!(e.lines().count(), 2, "{e}");
    }

    #[test]
    fn collections_merge_into_channel_filters() {
        let t = Topology::from_json_str(
            r#"{"Hubs":[{"Name":"C","Channels":[{"Name":"N-[ScopeValue]","Topic":"T","FilterCollections":["P"],
               "Filters":[{"Type":"Feature Names","Values":["Beta"]}]}],
               "FilterCollections":[{"Name":"P","Filters":[{"Type":"Product Codes","Values":["A","B"]}]}]}]}"#,
            "t.json",
        )
        .unwrap();
        let c = &t.channels[0];
        assert_eq!(
            c.products,
            Some(Accept::Only(["A".to_owned(), "B".to_owned()].into()))
        );
        assert!(c.features.is_some());
    }
}
