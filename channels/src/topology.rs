//! Loading and validating a topology file into the compiled, immutable
//! [`Topology`] both binaries resolve against.
//!
//! Invariant: a [`Topology`] only exists validated. Every problem in a file is
//! reported at once, each naming the file, the JSON path and the fix, and
//! nothing of an invalid file is ever used.

use crate::lookback::LookBack;
use crate::model::{ChannelDef, FilterDef, LookBackDef, TopologyFile};
use crate::resolve::{FEATURE_NAMES, PRODUCT_CODES};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// The placeholder replaced by each matching scope value.
pub const PLACEHOLDER: &str = "[ScopeValue]";

/// The wildcard filter value: any scope value of the filter's type.
pub const WILDCARD: &str = "*";

/// Upper bound of `TtlValue` for `CalendarDay` (about ten years).
pub const MAX_TTL_DAYS: u32 = 3660;

/// Upper bound of `TtlValue` for `Minutes` and of `RetentionMinutes`.
pub const MAX_MINUTES: u32 = MAX_TTL_DAYS * 24 * 60;

/// One validation problem: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// JSON path, e.g. `Hubs[0].Channels[2].Filters[0].Type`.
    pub path: String,
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (fix: {})", self.path, self.problem, self.fix)
    }
}

/// Why a topology could not be loaded. Every variant's message starts with
/// the file name; nothing of a file that fails is used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("{source_name}: cannot read the topology file: {error} (fix: check the path, e.g. SWITCHYARD_TOPOLOGY, and the file's permissions)")]
    Io {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    /// JSON/YAML syntax, a wrong type, a missing or an unknown field.
    #[error("{source_name}: {path}: {message}{} (fix: {fix})", at(*line, *column))]
    Parse {
        source_name: String,
        /// JSON path of the offending value (`(document)` for the top level).
        path: String,
        message: String,
        line: Option<u32>,
        column: Option<u32>,
        fix: &'static str,
    },
    /// The file parsed but breaks the topology's rules; one line per issue.
    #[error("{}", render(source_name, issues))]
    Invalid {
        source_name: String,
        issues: Vec<Issue>,
    },
}

impl TopologyError {
    /// The validation issues (empty for read and parse errors).
    pub fn issues(&self) -> &[Issue] {
        match self {
            TopologyError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

fn at(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

fn render(source: &str, issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("{source}: {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The accepted values of one scope type in a channel (all its filters of
/// that type, own and from collections, merged).
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

    fn merge(a: Option<Accept>, f: &FilterDef) -> Accept {
        let wildcard = f.values.iter().any(|v| v == WILDCARD);
        match (a, wildcard) {
            (Some(Accept::Any), _) | (_, true) => Accept::Any,
            (Some(Accept::Only(mut set)), false) => {
                set.extend(f.values.iter().cloned());
                Accept::Only(set)
            }
            (None, false) => Accept::Only(f.values.iter().cloned().collect()),
        }
    }
}

/// A channel definition, compiled for resolution.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) hub: String,
    /// `escape(hub) + "/"`: the tenant-less key prefix.
    pub(crate) key_stem: String,
    /// The name split at each `[ScopeValue]`; one part = no placeholder.
    pub(crate) name_parts: Vec<String>,
    pub(crate) topic: String,
    pub(crate) publishable: bool,
    pub(crate) products: Option<Accept>,
    pub(crate) features: Option<Accept>,
    pub(crate) lookback: Option<LookBack>,
    pub(crate) ephemeral: bool,
    pub(crate) retention: Option<Duration>,
    pub(crate) presence: bool,
}

impl Channel {
    pub(crate) fn has_filters(&self) -> bool {
        self.products.is_some() || self.features.is_some()
    }
}

/// A validated topology: immutable, cheap to share as `Arc<Topology>`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) channels: Vec<Channel>,
    /// Topic -> indices into `channels`, precomputed so resolution only looks
    /// at the topic's own channels.
    pub(crate) by_topic: HashMap<String, Vec<usize>>,
    pub(crate) file: TopologyFile,
}

impl Topology {
    /// Loads a `.json`, `.yaml` or `.yml` file; any other name is tried as
    /// JSON, then as YAML.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Io {
            source_name: source.clone(),
            error,
        })?;
        Self::from_text(&text, path)
    }

    /// Parses `text` as the content of `path` (the extension picks the format).
    pub(crate) fn from_text(text: &str, path: &Path) -> Result<Topology, TopologyError> {
        let source = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::from_json_str(text, &source),
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Self::from_yaml_str(text, &source)
            }
            _ => match Self::from_json_str(text, &source) {
                Err(json_err @ TopologyError::Parse { .. }) => {
                    match Self::from_yaml_str(text, &source) {
                        Ok(t) => Ok(t),
                        // A file that looks like JSON gets the JSON diagnosis.
                        Err(_) if text.trim_start().starts_with('{') => Err(json_err),
                        Err(yaml_err) => Err(yaml_err),
                    }
                }
                other => other,
            },
        }
    }

    /// Parses and validates JSON; `source` names the file in errors.
    pub fn from_json_str(text: &str, source: &str) -> Result<Topology, TopologyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: TopologyFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = (inner.line(), inner.column());
            let mut message = inner.to_string();
            strip_suffix_in_place(&mut message, &format!(" at line {line} column {column}"));
            let loc = (line > 0).then_some((line, column));
            parse_error(source, path, message, loc)
        })?;
        Self::compile(file, source)
    }

    /// Parses and validates YAML (same field names as JSON).
    pub fn from_yaml_str(text: &str, source: &str) -> Result<Topology, TopologyError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let file: TopologyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let loc = inner.location().map(|l| (l.line(), l.column()));
            let mut message = inner.to_string();
            if let Some((l, c)) = loc {
                strip_suffix_in_place(&mut message, &format!(" at line {l} column {c}"));
            }
            parse_error(source, path, strip_path_prefix(message), loc)
        })?;
        Self::compile(file, source)
    }

    /// Validates a parsed file and compiles it; all issues are reported.
    pub fn from_file(file: TopologyFile, source: &str) -> Result<Topology, TopologyError> {
        Self::compile(file, source)
    }

    fn compile(file: TopologyFile, source: &str) -> Result<Topology, TopologyError> {
        let mut issues = Vec::new();
        let mut channels = Vec::new();
        if file.hubs.is_empty() {
            issues.push(issue(
                "Hubs",
                "no hubs",
                "define at least one hub with channels",
            ));
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
                if col.name.trim().is_empty() {
                    issues.push(issue(
                        &format!("{cp}.Name"),
                        "empty collection name",
                        "give the collection a name",
                    ));
                } else if collections
                    .insert(col.name.as_str(), &col.filters)
                    .is_some()
                {
                    issues.push(issue(
                        &format!("{cp}.Name"),
                        &format!("duplicate filter collection name {:?}", col.name),
                        "give each collection of a hub a unique name",
                    ));
                }
                if col.filters.is_empty() {
                    issues.push(issue(
                        &format!("{cp}.Filters"),
                        "a filter collection without filters",
                        "add filters to the collection or remove it",
                    ));
                }
                for (f, filter) in col.filters.iter().enumerate() {
                    check_filter(filter, &format!("{cp}.Filters[{f}]"), &mut issues);
                }
            }
            let mut known: Vec<&str> = collections.keys().copied().collect();
            known.sort_unstable();
            let ctx = HubContext {
                path: &hp,
                name: &hub.name,
                key_stem: format!("{}/", crate::resolve::escape(&hub.name)),
                collections: &collections,
                known: known.join(", "),
            };
            let mut names = HashSet::new();
            let first = channels.len();
            for (i, ch) in hub.channels.iter().enumerate() {
                let p = format!("{hp}.Channels[{i}]");
                if let Some(c) = compile_channel(ch, &p, &ctx, &mut names, &mut issues) {
                    channels.push((i, c));
                }
            }
            check_key_overlaps(&hp, &channels[first..], &mut issues);
        }
        if !issues.is_empty() {
            return Err(TopologyError::Invalid {
                source_name: source.to_owned(),
                issues,
            });
        }
        let channels: Vec<Channel> = channels.into_iter().map(|(_, c)| c).collect();
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

    /// Whether any channel serves `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// Distinct topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// Number of channel definitions (templates, not concrete channels).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of hubs.
    pub fn hub_count(&self) -> usize {
        self.file.hubs.len()
    }

    /// The widest lookback among `topic`'s channels (`CalendarDay(n)` counts
    /// as `n` days), or `None` when no channel of the topic has one. For the
    /// exact start of the replay window use [`Topology::topic_window_start`].
    pub fn topic_lookback(&self, topic: &str) -> Option<LookBack> {
        self.topic_channels(topic)
            .filter_map(|c| c.lookback)
            .max_by_key(|lb| match *lb {
                LookBack::CalendarDay(n) => u64::from(n) * 24 * 60,
                LookBack::Minutes(n) => u64::from(n),
            })
    }

    /// The earliest replay-window start among `topic`'s channels at `now`.
    pub fn topic_window_start(
        &self,
        topic: &str,
        now: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.topic_channels(topic)
            .filter_map(|c| c.lookback)
            .map(|lb| lb.window_start(now, tz))
            .min()
    }

    /// Whether any channel of `topic` keeps presence (`Presence: true`).
    pub fn topic_has_presence(&self, topic: &str) -> bool {
        self.topic_channels(topic).any(|c| c.presence)
    }

    /// The file this topology was compiled from, as parsed.
    pub fn file(&self) -> &TopologyFile {
        &self.file
    }

    pub(crate) fn topic_channels<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a Channel> {
        self.by_topic
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|&i| self.channels.get(i))
    }
}

struct HubContext<'a> {
    path: &'a str,
    name: &'a str,
    key_stem: String,
    collections: &'a HashMap<&'a str, &'a [FilterDef]>,
    known: String,
}

fn issue(path: &str, problem: &str, fix: &str) -> Issue {
    Issue {
        path: path.to_owned(),
        problem: problem.to_owned(),
        fix: fix.to_owned(),
    }
}

fn strip_suffix_in_place(s: &mut String, suffix: &str) {
    if s.ends_with(suffix) {
        s.truncate(s.len() - suffix.len());
    }
}

/// serde_yaml prefixes its own path (`Hubs[0].Channels: ...`); ours is better
/// (it includes the unknown field's name), so drop theirs.
fn strip_path_prefix(message: String) -> String {
    if let Some((head, rest)) = message.split_once(": ") {
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_' | '?'));
        if is_path && head.contains(|c: char| c.is_ascii_uppercase()) {
            return rest.to_owned();
        }
    }
    message
}

fn parse_error(
    source: &str,
    path: String,
    message: String,
    loc: Option<(usize, usize)>,
) -> TopologyError {
    let fix = if message.contains("unknown field") {
        "remove the field or correct its spelling; field names are PascalCase as listed (Hubs, Name, Type, Channels, Topic, IsPublishableByUser, Filters, Values, LookBack, IsEnabled, TtlPeriodType, TtlValue, FilterCollections, FilterCollection, Ephemeral, RetentionMinutes, Presence)"
    } else if message.contains("missing field") {
        "add the required field"
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "give the value the expected type (strings in quotes, Values as a list, TtlValue and RetentionMinutes as whole non-negative numbers)"
    } else {
        "correct the syntax at the given line and column"
    };
    TopologyError::Parse {
        source_name: source.to_owned(),
        path: if path == "." || path.is_empty() {
            "(document)".into()
        } else {
            path
        },
        message,
        line: loc.and_then(|l| u32::try_from(l.0).ok()),
        column: loc.and_then(|l| u32::try_from(l.1).ok()),
        fix,
    }
}

fn check_filter(f: &FilterDef, path: &str, issues: &mut Vec<Issue>) {
    if f.filter_type != PRODUCT_CODES && f.filter_type != FEATURE_NAMES {
        issues.push(issue(
            &format!("{path}.Type"),
            &format!("unknown filter type {:?}", f.filter_type),
            "use \"Product Codes\" or \"Feature Names\" (exact spelling and case)",
        ));
    }
    if f.values.is_empty() {
        issues.push(issue(
            &format!("{path}.Values"),
            "empty Values list (it would match nothing)",
            "list the accepted values, or [\"*\"] for any",
        ));
    }
    for (i, v) in f.values.iter().enumerate() {
        if v.trim().is_empty() {
            issues.push(issue(
                &format!("{path}.Values[{i}]"),
                "an empty value",
                "remove the empty string",
            ));
        }
    }
    if f.values.len() > 1 && f.values.iter().any(|v| v == WILDCARD) {
        issues.push(issue(
            &format!("{path}.Values"),
            "\"*\" mixed with specific values (the wildcard makes them meaningless)",
            "use [\"*\"] alone for any value, or list only specific values",
        ));
    }
}

/// A `[...]` segment that is not the placeholder but looks like a misspelling
/// of it; such a name would silently become one shared static channel.
fn misspelt_placeholder(name: &str) -> Option<&str> {
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let after = &rest[open..];
        let Some(close) = after.find(']') else { break };
        let segment = &after[..=close];
        if segment != PLACEHOLDER && segment.to_ascii_lowercase().contains("scope") {
            return Some(segment);
        }
        rest = &after[close + 1..];
    }
    None
}

fn compile_lookback(lb: &LookBackDef, lp: &str, issues: &mut Vec<Issue>) -> Option<LookBack> {
    let before = issues.len();
    let period = match lb.ttl_period_type.as_deref() {
        Some("CalendarDay") => Some(true),
        Some("Minutes") => Some(false),
        Some(other) => {
            issues.push(issue(
                &format!("{lp}.TtlPeriodType"),
                &format!("unknown TtlPeriodType {other:?}"),
                "use \"CalendarDay\" or \"Minutes\"",
            ));
            None
        }
        None if lb.is_enabled => {
            issues.push(issue(
                &format!("{lp}.TtlPeriodType"),
                "enabled lookback without TtlPeriodType",
                "add \"TtlPeriodType\": \"CalendarDay\" or \"Minutes\"",
            ));
            None
        }
        None => None,
    };
    if lb.is_enabled && matches!(lb.ttl_value, None | Some(0)) {
        issues.push(issue(
            &format!("{lp}.TtlValue"),
            "enabled lookback without a positive TtlValue",
            "set TtlValue to 1 or more, or IsEnabled to false",
        ));
    }
    let (max, unit) = match period {
        Some(true) => (MAX_TTL_DAYS, "days"),
        _ => (MAX_MINUTES, "minutes"),
    };
    if let Some(v) = lb.ttl_value.filter(|v| *v > max) {
        issues.push(issue(
            &format!("{lp}.TtlValue"),
            &format!("TtlValue {v} is too large"),
            &format!("use at most {max} {unit}"),
        ));
    }
    if !lb.is_enabled || issues.len() > before {
        return None;
    }
    match (period, lb.ttl_value) {
        (Some(true), Some(n)) => Some(LookBack::CalendarDay(n)),
        (Some(false), Some(n)) => Some(LookBack::Minutes(n)),
        _ => None,
    }
}

fn compile_channel(
    ch: &ChannelDef,
    p: &str,
    hub: &HubContext<'_>,
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
            &format!("duplicate channel name {:?} in hub {:?}", ch.name, hub.name),
            "give each channel of a hub a unique name (channel keys are hub/name)",
        ));
    }
    if let Some(segment) = misspelt_placeholder(&ch.name) {
        issues.push(issue(
            &format!("{p}.Name"),
            &format!("{segment} looks like a misspelt {PLACEHOLDER} placeholder"),
            "write the placeholder exactly as [ScopeValue]",
        ));
    }
    if ch.topic.trim().is_empty() {
        issues.push(issue(
            &format!("{p}.Topic"),
            "empty topic",
            "name the client-facing topic, e.g. \"News\"",
        ));
    } else if ch.topic.trim() != ch.topic {
        issues.push(issue(
            &format!("{p}.Topic"),
            &format!("topic {:?} has leading or trailing spaces", ch.topic),
            "remove the spaces (clients and producers name the topic exactly)",
        ));
    }
    for (i, f) in ch.filters.iter().enumerate() {
        check_filter(f, &format!("{p}.Filters[{i}]"), issues);
    }
    // Collection filters were checked where the collection is defined.
    let mut filters: Vec<&FilterDef> = ch.filters.iter().collect();
    let refs = ch
        .filter_collections
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{p}.FilterCollections[{i}]"), n))
        .chain(
            ch.filter_collection
                .iter()
                .map(|n| (format!("{p}.FilterCollection"), n)),
        );
    for (path, name) in refs {
        match hub.collections.get(name.as_str()) {
            Some(fs) => filters.extend(fs.iter()),
            None => issues.push(issue(
                &path,
                &format!("unknown filter collection {name:?}"),
                &if hub.known.is_empty() {
                    format!(
                        "define it under {}.FilterCollections (collections are per hub)",
                        hub.path
                    )
                } else {
                    format!(
                        "use one of {}.FilterCollections ({}), or define it there",
                        hub.path, hub.known
                    )
                },
            )),
        }
    }
    let mut products = None;
    let mut features = None;
    for f in &filters {
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
            "add a filter (e.g. {\"Type\": \"Product Codes\", \"Values\": [\"*\"]}) or a FilterCollections reference, or remove the placeholder",
        ));
    }
    let lookback = ch
        .look_back
        .as_ref()
        .and_then(|lb| compile_lookback(lb, &format!("{p}.LookBack"), issues));
    match ch.retention_minutes {
        Some(0) => issues.push(issue(
            &format!("{p}.RetentionMinutes"),
            "zero retention",
            "use a positive number of minutes or leave it out",
        )),
        Some(m) if m > MAX_MINUTES => issues.push(issue(
            &format!("{p}.RetentionMinutes"),
            &format!("RetentionMinutes {m} is too large"),
            &format!("use at most {MAX_MINUTES} minutes"),
        )),
        _ => {}
    }
    let lookback_enabled = ch.look_back.as_ref().is_some_and(|lb| lb.is_enabled);
    if ch.ephemeral && (lookback_enabled || ch.retention_minutes.is_some()) {
        issues.push(issue(
            &format!("{p}.Ephemeral"),
            "an ephemeral channel cannot have an enabled LookBack or RetentionMinutes (it is never stored)",
            "remove Ephemeral, or the LookBack / RetentionMinutes",
        ));
    }
    if issues.len() > before {
        return None;
    }
    Some(Channel {
        hub: hub.name.to_owned(),
        key_stem: hub.key_stem.clone(),
        name_parts: ch.name.split(PLACEHOLDER).map(str::to_owned).collect(),
        topic: ch.topic.clone(),
        publishable: ch.is_publishable_by_user,
        products,
        features,
        lookback,
        ephemeral: ch.ephemeral,
        presence: ch.presence,
        retention: ch
            .retention_minutes
            .map(|m| Duration::from_secs(u64::from(m) * 60)),
    })
}

/// Two channels of one hub on different topics must never produce the same
/// concrete name, or an event of one topic would land in a channel whose
/// subscribers asked for the other. Static names are covered by the
/// duplicate-name rule; here a template (`Alerts-[ScopeValue]`) is checked
/// against every other name it could expand to (`Alerts-Daily`). Names are
/// indexed by their fixed prefix so only candidates whose prefixes nest are
/// compared (a reload of a large file stays cheap).
fn check_key_overlaps(hub_path: &str, channels: &[(usize, Channel)], issues: &mut Vec<Issue>) {
    let mut sorted: Vec<(&str, usize)> = channels
        .iter()
        .enumerate()
        .map(|(k, (_, c))| (ends(c).0, k))
        .collect();
    sorted.sort_unstable();
    let mut by_prefix: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, (_, c)) in channels.iter().enumerate() {
        if c.name_parts.len() >= 2 {
            by_prefix.entry(ends(c).0).or_default().push(k);
        }
    }
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (a_k, (_, a)) in channels.iter().enumerate() {
        if a.name_parts.len() < 2 {
            continue;
        }
        let (a_pre, a_suf) = ends(a);
        // Names whose prefix starts with a's prefix (statics and templates).
        let from = sorted.partition_point(|(p, _)| *p < a_pre);
        let longer = sorted[from..]
            .iter()
            .take_while(|(p, _)| p.starts_with(a_pre))
            .map(|(_, k)| *k);
        // Templates whose prefix is a proper prefix of a's.
        let shorter = a_pre
            .char_indices()
            .filter_map(|(i, _)| by_prefix.get(&a_pre[..i]))
            .flatten()
            .copied();
        for b_k in longer.chain(shorter) {
            let b = &channels[b_k].1;
            if b_k == a_k || a.topic == b.topic {
                continue;
            }
            let (b_pre, b_suf) = ends(b);
            let overlap = if b.name_parts.len() < 2 {
                // A template expands with a non-empty value.
                b_pre.len() > a_pre.len() + a_suf.len() && b_pre.ends_with(a_suf)
            } else {
                a_suf.ends_with(b_suf) || b_suf.ends_with(a_suf)
            };
            if overlap {
                let pair = if b.name_parts.len() >= 2 {
                    (a_k.min(b_k), a_k.max(b_k))
                } else {
                    (a_k, b_k)
                };
                found.push(pair);
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    for (a_k, b_k) in found {
        let ((ai, a), (bi, b)) = (&channels[a_k], &channels[b_k]);
        issues.push(issue(
            &format!("{hub_path}.Channels[{ai}].Name"),
            &format!(
                "channel {:?} (topic {:?}) can expand to the same name as channel {:?} (Channels[{bi}], topic {:?}), which would mix the two topics in one channel",
                a.name_parts.join(PLACEHOLDER),
                a.topic,
                b.name_parts.join(PLACEHOLDER),
                b.topic
            ),
            "make the fixed parts of the names distinct, e.g. start each with its topic",
        ));
    }
}

fn ends(c: &Channel) -> (&str, &str) {
    let pre = c.name_parts.first().map(String::as_str).unwrap_or("");
    let suf = if c.name_parts.len() > 1 {
        c.name_parts.last().map(String::as_str).unwrap_or("")
    } else {
        ""
    };
    (pre, suf)
}

#[cfg(test)]
mod tests;
