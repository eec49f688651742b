//! The one resolution function: from a topic and a list of scopes (a user's
//! entitlements on subscribe, an event's audience on publish) to the concrete
//! channels, following the seed's priority chain:
//!
//! 1. a channel without filters is one static channel (`[ScopeValue]` → `*`);
//! 2. if the scopes carry product codes and the channel filters on them, each
//!    accepted code becomes a channel (`News-[ScopeValue]` → `News-CHLT`);
//! 3. otherwise feature names, the same way.
//!
//! Invariant: [`Topology::resolve`] is a pure function of its inputs, and
//! its output is de-duplicated by key and sorted, so the subscribe and
//! publish sides always agree on channel identity.

use crate::lookback::LookBack;
use crate::topology::{Channel, Topology, PLACEHOLDER};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const PRODUCT_CODES: &str = "Product Codes";
pub const FEATURE_NAMES: &str = "Feature Names";

/// One scope of an audience or of entitlements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub scope_type: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// What a user holds (from the token's claims).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub tenant: Option<String>,
    pub products: Vec<String>,
    pub features: Vec<String>,
}

impl Entitlements {
    /// The entitlements as scopes.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Subscribe,
    /// An event from Kafka: `IsPublishableByUser` does not apply.
    SystemPublish,
    /// A client's `publish` frame: only publishable channels.
    UserPublish,
}

/// A concrete channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedChannel {
    /// Globally unique log key: `hub/name`, or `tenant/hub/name` (each part
    /// escaped so no two inputs share a key).
    pub key: String,
    pub name: String,
    pub hub: String,
    pub topic: String,
    pub ephemeral: bool,
    pub lookback: Option<LookBack>,
    pub retention: Option<Duration>,
}

fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['%', '/']) {
        s.replace('%', "%25").replace('/', "%2F").into()
    } else {
        s.into()
    }
}

fn values<'a>(scopes: &'a [Scope], scope_type: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    scopes
        .iter()
        .filter(move |s| s.scope_type == scope_type)
        .flat_map(|s| s.values.iter().map(String::as_str))
}

impl Topology {
    /// Resolves `topic` for `scopes` (in `tenant`, when given).
    pub fn resolve(
        &self,
        topic: &str,
        scopes: &[Scope],
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> Vec<ResolvedChannel> {
        let Some(indices) = self.by_topic.get(topic) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &i in indices {
            let c = &self.channels[i];
            if purpose == Purpose::UserPublish && !c.publishable {
                continue;
            }
            for name in channel_names(c, scopes) {
                out.push(make(c, name, tenant));
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        out
    }

    pub fn resolve_subscriber(&self, topic: &str, ent: &Entitlements) -> Vec<ResolvedChannel> {
        self.resolve(
            topic,
            &ent.scopes(),
            ent.tenant.as_deref(),
            Purpose::Subscribe,
        )
    }

    pub fn resolve_event(
        &self,
        topic: &str,
        scopes: &[Scope],
        tenant: Option<&str>,
    ) -> Vec<ResolvedChannel> {
        self.resolve(topic, scopes, tenant, Purpose::SystemPublish)
    }

    pub fn resolve_user_publish(&self, topic: &str, ent: &Entitlements) -> Vec<ResolvedChannel> {
        self.resolve(
            topic,
            &ent.scopes(),
            ent.tenant.as_deref(),
            Purpose::UserPublish,
        )
    }
}

fn channel_names(c: &Channel, scopes: &[Scope]) -> Vec<String> {
    if c.products.is_none() && c.features.is_none() {
        return vec![c.name.replace(PLACEHOLDER, "*")];
    }
    for (accept, scope_type) in [(&c.products, PRODUCT_CODES), (&c.features, FEATURE_NAMES)] {
        let Some(accept) = accept else { continue };
        let matched: Vec<&str> = values(scopes, scope_type)
            .filter(|v| !v.is_empty() && accept.accepts(v))
            .collect();
        if matched.is_empty() {
            continue;
        }
        return if c.has_placeholder() {
            matched
                .iter()
                .map(|v| c.name.replace(PLACEHOLDER, v))
                .collect()
        } else {
            vec![c.name.clone()]
        };
    }
    Vec::new()
}

fn make(c: &Channel, name: String, tenant: Option<&str>) -> ResolvedChannel {
    let key = match tenant {
        Some(t) => format!("{}/{}/{}", escape(t), escape(&c.hub), escape(&name)),
        None => format!("{}/{}", escape(&c.hub), escape(&name)),
    };
    ResolvedChannel {
        key,
        name,
        hub: c.hub.to_string(),
        topic: c.topic.clone(),
        ephemeral: c.ephemeral,
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
}
