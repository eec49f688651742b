//! The one resolution function: from a topic and a list of scopes (a user's
//! entitlements on subscribe, an event's audience on publish) to the concrete
//! channels, following the seed's priority chain for each of the topic's
//! channel definitions:
//!
//! 1. no filters (after merging collections): one static channel
//!    (`[ScopeValue]` → `*`);
//! 2. the scopes' product codes accepted by the channel's `Product Codes`
//!    filter: each becomes a channel (`News-[ScopeValue]` → `News-CHLT`), or
//!    the single static name when the name has no placeholder;
//! 3. if that yields nothing: the same with `Feature Names`.
//!
//! Invariant: [`Topology::resolve`] is a pure function of its inputs and its
//! output is de-duplicated by key and sorted by key, so the subscribe and
//! publish sides always agree on channel identity: a user receives an event
//! exactly when their channel keys and the event's intersect.

use crate::lookback::LookBack;
use crate::topology::{Accept, Channel, Topology};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;

/// Scope type of product entitlements (JWT claim `products`).
pub const PRODUCT_CODES: &str = "Product Codes";
/// Scope type of feature entitlements (JWT claim `features`).
pub const FEATURE_NAMES: &str = "Feature Names";

/// One scope of an event's audience or of a user's entitlements; on the wire
/// `{"type": "Product Codes", "values": ["CHLT"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub scope_type: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl Scope {
    /// A `Product Codes` scope.
    pub fn products<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Scope {
        Scope {
            scope_type: PRODUCT_CODES.to_owned(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// A `Feature Names` scope.
    pub fn features<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Scope {
        Scope {
            scope_type: FEATURE_NAMES.to_owned(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

/// What a user holds (from the token's `tenant`, `products`, `features`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub tenant: Option<String>,
    pub products: Vec<String>,
    pub features: Vec<String>,
}

impl Entitlements {
    /// The entitlements as scopes: products as `Product Codes`, features as
    /// `Feature Names`.
    pub fn scopes(&self) -> Vec<Scope> {
        vec![
            Scope {
                scope_type: PRODUCT_CODES.into(),
                values: self.products.clone(),
            },
            Scope {
                scope_type: FEATURE_NAMES.into(),
                values: self.features.clone(),
            },
        ]
    }
}

/// Why resolution is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A client subscribes: the scopes are its entitlements.
    Subscribe,
    /// An event from Kafka: `IsPublishableByUser` does not apply.
    SystemPublish,
    /// A client's `publish` frame: only channels with `IsPublishableByUser`.
    UserPublish,
}

/// A concrete channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedChannel {
    /// Globally unique log key: `hub/name`, or `tenant/hub/name` with a
    /// tenant. Each part has `%` and `/` percent-escaped, so distinct
    /// (tenant, hub, name) triples never share a key.
    pub key: String,
    /// The concrete name, e.g. `News-CHLT`.
    pub name: String,
    pub hub: String,
    pub topic: String,
    /// Best-effort: delivered live only, never stored in the cursor log.
    pub ephemeral: bool,
    /// The gateways keep presence in this channel (`Presence: true`).
    pub presence: bool,
    pub lookback: Option<LookBack>,
    /// Keep entries at least this long (beyond the lookback window).
    pub retention: Option<Duration>,
}

/// Percent-escapes the key separator (and the escape character itself).
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if s.contains(['%', '/']) {
        s.replace('%', "%25").replace('/', "%2F").into()
    } else {
        s.into()
    }
}

fn values_of<'a>(scopes: &'a [Scope], scope_type: &str) -> Vec<&'a str> {
    scopes
        .iter()
        .filter(|s| s.scope_type == scope_type)
        .flat_map(|s| s.values.iter().map(String::as_str))
        .collect()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Topology {
    /// Resolves `topic` for `scopes` (inside `tenant`, when given). Scope
    /// types other than `Product Codes` and `Feature Names` are ignored.
    pub fn resolve(
        &self,
        topic: &str,
        scopes: &[Scope],
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> Vec<ResolvedChannel> {
        let products = values_of(scopes, PRODUCT_CODES);
        let features = values_of(scopes, FEATURE_NAMES);
        self.resolve_values(topic, &products, &features, tenant, purpose)
    }

    /// The channels a user with `ent` sits in for `topic`.
    pub fn resolve_subscriber(&self, topic: &str, ent: &Entitlements) -> Vec<ResolvedChannel> {
        self.resolve_values(
            topic,
            &as_strs(&ent.products),
            &as_strs(&ent.features),
            ent.tenant.as_deref(),
            Purpose::Subscribe,
        )
    }

    /// The channels an event (from Kafka) goes to; ignores
    /// `IsPublishableByUser`.
    pub fn resolve_event(
        &self,
        topic: &str,
        scopes: &[Scope],
        tenant: Option<&str>,
    ) -> Vec<ResolvedChannel> {
        self.resolve(topic, scopes, tenant, Purpose::SystemPublish)
    }

    /// The channels a user's own `publish` goes to: only channels with
    /// `IsPublishableByUser`, scoped by the user's entitlements.
    pub fn resolve_user_publish(&self, topic: &str, ent: &Entitlements) -> Vec<ResolvedChannel> {
        self.resolve_values(
            topic,
            &as_strs(&ent.products),
            &as_strs(&ent.features),
            ent.tenant.as_deref(),
            Purpose::UserPublish,
        )
    }

    fn resolve_values(
        &self,
        topic: &str,
        products: &[&str],
        features: &[&str],
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> Vec<ResolvedChannel> {
        let tenant_prefix = tenant.map(|t| format!("{}/", escape(t)));
        let tenant_prefix = tenant_prefix.as_deref().unwrap_or("");
        let mut out = Vec::new();
        for c in self.topic_channels(topic) {
            if purpose == Purpose::UserPublish && !c.publishable {
                continue;
            }
            if !c.has_filters() {
                out.push(make(c, "*", tenant_prefix));
                continue;
            }
            let Some((accept, values)) = pick(c, products, features) else {
                continue;
            };
            if c.name_parts.len() == 1 {
                out.push(make(c, "", tenant_prefix));
                continue;
            }
            for v in values.iter().filter(|v| !v.is_empty() && accept.accepts(v)) {
                out.push(make(c, v, tenant_prefix));
            }
        }
        // Stable: among equal keys the first channel definition wins.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        out
    }
}

/// The seed's priority chain: product codes first, then feature names; the
/// first scope type with at least one accepted value decides.
fn pick<'c, 'v>(
    c: &'c Channel,
    products: &'v [&'v str],
    features: &'v [&'v str],
) -> Option<(&'c Accept, &'v [&'v str])> {
    [(&c.products, products), (&c.features, features)]
        .into_iter()
        .find_map(|(accept, values)| {
            let accept = accept.as_ref()?;
            values
                .iter()
                .any(|v| !v.is_empty() && accept.accepts(v))
                .then_some((accept, values))
        })
}

fn make(c: &Channel, value: &str, tenant_prefix: &str) -> ResolvedChannel {
    let name = c.name_parts.join(value);
    let escaped = escape(&name);
    let mut key = String::with_capacity(tenant_prefix.len() + c.key_stem.len() + escaped.len());
    key.push_str(tenant_prefix);
    key.push_str(&c.key_stem);
    key.push_str(&escaped);
    ResolvedChannel {
        key,
        name,
        hub: c.hub.clone(),
        topic: c.topic.clone(),
        ephemeral: c.ephemeral,
        presence: c.presence,
        lookback: c.lookback,
        retention: c.retention,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{
      "Hubs": [{
        "Name": "Content", "Type": "PubSub",
        "Channels": [
          {"Name": "News-[ScopeValue]", "Topic": "News", "IsPublishableByUser": false,
           "Filters": [{"Type": "Product Codes", "Values": ["*"]}],
           "LookBack": {"IsEnabled": true, "TtlPeriodType": "CalendarDay", "TtlValue": 1}},
          {"Name": "Site Visit Count", "Topic": "SiteVisits", "IsPublishableByUser": false, "Filters": []},
          {"Name": "Chat", "Topic": "Chat", "IsPublishableByUser": true, "Filters": []},
          {"Name": "Alerts-[ScopeValue]", "Topic": "Alerts", "IsPublishableByUser": false,
           "Filters": [{"Type": "Product Codes", "Values": ["CHLT"]}, {"Type": "Feature Names", "Values": ["*"]}]}
        ]
      }]
    }"#;

    fn topo() -> Topology {
        Topology::from_json_str(SEED, "seed.json").unwrap()
    }

    fn user(products: &[&str]) -> Entitlements {
        Entitlements {
            tenant: None,
            products: products.iter().map(|s| s.to_string()).collect(),
            features: vec![],
        }
    }

    fn names(v: &[ResolvedChannel]) -> Vec<&str> {
        v.iter().map(|c| c.name.as_str()).collect()
    }

    fn product_scope(v: &[&str]) -> Vec<Scope> {
        vec![Scope {
            scope_type: PRODUCT_CODES.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
        }]
    }

    #[test]
    fn the_seed_example() {
        let t = topo();
        let a = t.resolve_subscriber("News", &user(&["CHLT", "Sfc"]));
        let b = t.resolve_subscriber("News", &user(&["FullAccess"]));
        let c = t.resolve_subscriber("News", &user(&["Sfc"]));
        assert_eq!(names(&a), ["News-CHLT", "News-Sfc"]);
        assert_eq!(names(&b), ["News-FullAccess"]);
        let ev = t.resolve_event("News", &product_scope(&["CHLT", "FullAccess"]), None);
        assert_eq!(names(&ev), ["News-CHLT", "News-FullAccess"]);
        let shares = |u: &[ResolvedChannel], e: &[ResolvedChannel]| {
            u.iter().any(|x| e.iter().any(|y| x.key == y.key))
        };
        assert!(shares(&a, &ev) && shares(&b, &ev) && !shares(&c, &ev));
        assert_eq!(a[0].key, "Content/News-CHLT");
        assert_eq!(a[0].lookback, Some(LookBack::CalendarDay(1)));
    }

    #[test]
    fn static_channels_and_publish_gate() {
        let t = topo();
        assert_eq!(
            names(&t.resolve_subscriber("SiteVisits", &user(&[]))),
            ["Site Visit Count"]
        );
        assert_eq!(
            names(&t.resolve_event("SiteVisits", &[], None)),
            ["Site Visit Count"]
        );
        assert!(t.resolve_user_publish("News", &user(&["CHLT"])).is_empty());
        assert_eq!(names(&t.resolve_user_publish("Chat", &user(&[]))), ["Chat"]);
        assert!(t.resolve_subscriber("Nope", &user(&["CHLT"])).is_empty());
    }

    #[test]
    fn products_first_then_feature_names() {
        let t = topo();
        let mut u = user(&["CHLT"]);
        u.features = vec!["Beta".into()];
        assert_eq!(names(&t.resolve_subscriber("Alerts", &u)), ["Alerts-CHLT"]);
        let u = Entitlements {
            tenant: None,
            products: vec!["Sfc".into()],
            features: vec!["Beta".into()],
        };
        assert_eq!(names(&t.resolve_subscriber("Alerts", &u)), ["Alerts-Beta"]);
    }

    #[test]
    fn tenants_never_share_channels() {
        let t = topo();
        let mut a = user(&["CHLT"]);
        a.tenant = Some("acme".into());
        let mut b = user(&["CHLT"]);
        b.tenant = Some("globex".into());
        let ka = &t.resolve_subscriber("News", &a)[0].key;
        let kb = &t.resolve_subscriber("News", &b)[0].key;
        assert_ne!(ka, kb);
        assert_eq!(ka, "acme/Content/News-CHLT");
        // Escaping keeps crafted names apart.
        let mut c = user(&["CHLT"]);
        c.tenant = Some("acme/Content".into());
        assert_ne!(&t.resolve_subscriber("News", &c)[0].key, ka);
    }

    fn scopes(products: &[&str], features: &[&str]) -> Vec<Scope> {
        vec![
            Scope::products(products.iter().copied()),
            Scope::features(features.iter().copied()),
        ]
    }

    #[test]
    fn specific_values_keep_only_matching_codes() {
        let t = Topology::from_json_str(
            r#"{"Hubs":[{"Name":"H","Channels":[
              {"Name":"Sector-[ScopeValue]","Topic":"Sector","Filters":[{"Type":"Product Codes","Values":["CHLT"]}]},
              {"Name":"Premium Desk","Topic":"Desk","Filters":[{"Type":"Product Codes","Values":["CHLT","FullAccess"]}]}
            ]}]}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(
            names(&t.resolve_event("Sector", &product_scope(&["CHLT", "Sfc"]), None)),
            ["Sector-CHLT"]
        );
        assert!(t.resolve_subscriber("Sector", &user(&["Sfc"])).is_empty());
        // No placeholder: one static channel when any value matches.
        assert_eq!(
            names(&t.resolve_subscriber("Desk", &user(&["FullAccess", "CHLT"]))),
            ["Premium Desk"]
        );
        assert!(t.resolve_subscriber("Desk", &user(&["Sfc"])).is_empty());
    }

    #[test]
    fn feature_names_only_when_products_yield_nothing() {
        let t = topo();
        // Alerts: products ["CHLT"], features ["*"].
        let both = t.resolve_event("Alerts", &scopes(&["CHLT", "Sfc"], &["Beta"]), None);
        assert_eq!(names(&both), ["Alerts-CHLT"]);
        let features = t.resolve_event("Alerts", &scopes(&["Sfc"], &["Beta", "Gamma"]), None);
        assert_eq!(names(&features), ["Alerts-Beta", "Alerts-Gamma"]);
        let only_features = t.resolve_event("Alerts", &scopes(&[], &["Beta"]), None);
        assert_eq!(names(&only_features), ["Alerts-Beta"]);
        // News filters products only: features never reach it.
        assert!(t
            .resolve_event("News", &scopes(&[], &["Beta"]), None)
            .is_empty());
    }

    #[test]
    fn scopes_are_merged_cleaned_and_unknown_types_ignored() {
        let t = topo();
        let s = vec![
            Scope::products(["CHLT"]),
            Scope {
                scope_type: "Regions".into(),
                values: vec!["EU".into()],
            },
            Scope::products(["Sfc", "CHLT", ""]),
        ];
        assert_eq!(
            names(&t.resolve_event("News", &s, None)),
            ["News-CHLT", "News-Sfc"]
        );
        assert!(t.resolve_event("News", &[], None).is_empty());
        let odd = Scope {
            scope_type: "product codes".into(),
            values: vec!["CHLT".into()],
        };
        assert!(t.resolve_event("News", &[odd], None).is_empty());
    }

    #[test]
    fn a_topic_spans_channels_and_hubs_sorted_and_deduplicated() {
        let t = Topology::from_json_str(
            r#"{"Hubs":[
              {"Name":"Zeta","Channels":[{"Name":"News-[ScopeValue]","Topic":"News","Filters":[{"Type":"Product Codes","Values":["*"]}]}]},
              {"Name":"Alpha","Channels":[
                {"Name":"News-[ScopeValue]","Topic":"News","Filters":[{"Type":"Product Codes","Values":["*"]}],
                 "LookBack":{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":5}},
                {"Name":"News-CHLT","Topic":"News","Filters":[]},
                {"Name":"Ticker","Topic":"News","Ephemeral":true}
              ]}
            ]}"#,
            "t.json",
        )
        .unwrap();
        let r = t.resolve_subscriber("News", &user(&["Sfc", "CHLT", "CHLT"]));
        let keys: Vec<&str> = r.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Alpha/News-CHLT",
                "Alpha/News-Sfc",
                "Alpha/Ticker",
                "Zeta/News-CHLT",
                "Zeta/News-Sfc"
            ]
        );
        // On a shared key the first definition in the file wins.
        assert_eq!(r[0].lookback, Some(LookBack::Minutes(5)));
        assert!(r[2].ephemeral);
        assert_eq!(r[3].hub, "Zeta");
        assert_eq!(r[3].topic, "News");
    }

    #[test]
    fn subscribe_and_system_publish_ignore_the_publish_flag() {
        let t = topo();
        for p in [Purpose::Subscribe, Purpose::SystemPublish] {
            assert_eq!(
                names(&t.resolve("News", &product_scope(&["CHLT"]), None, p)),
                ["News-CHLT"]
            );
        }
        assert!(t
            .resolve(
                "News",
                &product_scope(&["CHLT"]),
                None,
                Purpose::UserPublish
            )
            .is_empty());
        let u = user(&["CHLT"]);
        assert_eq!(
            t.resolve("News", &u.scopes(), None, Purpose::Subscribe),
            t.resolve_subscriber("News", &u)
        );
    }

    #[test]
    fn keys_escape_separators() {
        let t = Topology::from_json_str(
            r#"{"Hubs":[{"Name":"a/b","Channels":[{"Name":"N-[ScopeValue]","Topic":"T","Filters":[{"Type":"Product Codes","Values":["*"]}]}]}]}"#,
            "t.json",
        )
        .unwrap();
        let r = t.resolve_event("T", &product_scope(&["x/y", "50%"]), Some("t/1"));
        let keys: Vec<&str> = r.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["t%2F1/a%2Fb/N-50%25", "t%2F1/a%2Fb/N-x%2Fy"]);
        assert_eq!(r[1].name, "N-x/y");
    }
}
