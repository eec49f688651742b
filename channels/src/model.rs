//! The topology file as written: the seed case study's JSON shape (`Hubs`,
//! `Channels`, `Filters`, `FilterCollections`, `LookBack`), also accepted as
//! YAML with the same field names, plus the documented extensions.
//!
//! Invariant: unknown fields are rejected (a typo must not silently change
//! routing), and a file in exactly the seed's shape always deserializes: every
//! field the seed writes keeps its name and meaning, extensions are optional.

use serde::{Deserialize, Serialize};

/// A whole topology file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TopologyFile {
    pub hubs: Vec<HubDef>,
}

/// A hub: a group of channels with shared filter collections. Channel keys
/// are unique per hub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HubDef {
    pub name: String,
    /// The seed's hub type (`"PubSub"`); informational.
    #[serde(default, rename = "Type", skip_serializing_if = "Option::is_none")]
    pub hub_type: Option<String>,
    #[serde(default)]
    pub channels: Vec<ChannelDef>,
    #[serde(default)]
    pub filter_collections: Vec<CollectionDef>,
}

/// A channel definition; its name may hold the `[ScopeValue]` placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ChannelDef {
    pub name: String,
    pub topic: String,
    #[serde(default)]
    pub is_publishable_by_user: bool,
    #[serde(default)]
    pub filters: Vec<FilterDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look_back: Option<LookBackDef>,
    /// Extension: names of the hub's filter collections whose filters are
    /// merged with the channel's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_collections: Vec<String>,
    /// Extension: a single collection name (same meaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_collection: Option<String>,
    /// Extension: best-effort channel, delivered live only, never stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// Extension: keep the channel's entries at least this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_minutes: Option<u32>,
    /// Extension: the gateways keep who is in each of the channel's
    /// concrete channels (presence: join/leave frames, member lists).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
}

/// A filter: a scope type and the accepted values (`["*"]` = any).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FilterDef {
    #[serde(rename = "Type")]
    pub filter_type: String,
    pub values: Vec<String>,
}

/// A named, reusable set of filters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CollectionDef {
    pub name: String,
    pub filters: Vec<FilterDef>,
}

/// A channel's lookback (replay window for subscribers without a cursor).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LookBackDef {
    pub is_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_period_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_value: Option<u32>,
}
