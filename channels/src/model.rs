//! The topology file as written: the seed case study's JSON shape (`Hubs`,
//! `Channels`, `Filters`, `FilterCollections`, `LookBack`), also accepted as
//! YAML with the same field names, plus the documented extensions.
//!
//! Invariant: unknown fields are rejected (a typo must not silently change
//! routing); a file in exactly the seed's shape always deserializes.

use serde::{Deserialize, Serialize};

/// A whole topology file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TopologyFile {
    pub hubs: Vec<HubDef>,
}

/// A hub: a group of channels with shared filter collections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HubDef {
    pub name: String,
    #[serde(default, rename = "Type")]
    pub hub_type: Option<String>,
    #[serde(default)]
    pub channels: Vec<ChannelDef>,
    #[serde(default)]
    pub filter_collections: Vec<CollectionDef>,
}

/// A channel definition; its name may hold the `[ScopeValue]` placeholder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ChannelDef {
    pub name: String,
    pub topic: String,
    #[serde(default)]
    pub is_publishable_by_user: bool,
    #[serde(default)]
    pub filters: Vec<FilterDef>,
    #[serde(default)]
    pub look_back: Option<LookBackDef>,
    /// Extension: names of the hub's filter collections to reuse.
    #[serde(default)]
    pub filter_collections: Vec<String>,
    /// Extension: a single collection name.
    #[serde(default)]
    pub filter_collection: Option<String>,
    /// Extension: best-effort channel that skips the cursor log.
    #[serde(default)]
    pub ephemeral: bool,
    /// Extension: minimum retention of the channel's entries, in minutes.
    #[serde(default)]
    pub retention_minutes: Option<u32>,
}

/// A filter: a scope type and the accepted values (`["*"]` = any).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FilterDef {
    #[serde(rename = "Type")]
    pub filter_type: String,
    pub values: Vec<String>,
}

/// A named, reusable set of filters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CollectionDef {
    pub name: String,
    pub filters: Vec<FilterDef>,
}

/// A channel's lookback (replay window for subscribers without a cursor).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LookBackDef {
    pub is_enabled: bool,
    #[serde(default)]
    pub ttl_period_type: Option<String>,
    #[serde(default)]
    pub ttl_value: Option<u32>,
}
