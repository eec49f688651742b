//! Property tests of resolution against an independent oracle of the seed's
//! rules: for random topologies (several hubs, filter collections, wildcard
//! and specific filters, static and templated names), entitlements and event
//! scopes, a user receives an event if and only if the oracle says a channel
//! matches both; channel keys are unique; tenants never mix.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use switchyard_channels::{Entitlements, Purpose, Scope, Topology, FEATURE_NAMES, PRODUCT_CODES};

const PRODUCTS: &[&str] = &["A", "B", "C", "D"];
const FEATURES: &[&str] = &["x", "y", "z"];
const TOPICS: usize = 2;

/// A filter of one scope type: `None` = no such filter, `Some(None)` =
/// wildcard, `Some(Some(indices))` = specific values.
type FilterSpec = Option<Option<Vec<usize>>>;

#[derive(Debug, Clone)]
struct ChanSpec {
    hub: usize,
    placeholder: bool,
    products: FilterSpec,
    features: FilterSpec,
    /// Reference to the hub's collection "P" (products A, B) or "F" (any
    /// feature).
    collection: Option<&'static str>,
    topic: usize,
    publishable: bool,
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    prop_oneof![
        Just(None),
        Just(Some(None)),
        proptest::collection::vec(0..4usize, 1..3).prop_map(|v| Some(Some(v))),
    ]
}

fn chan() -> impl Strategy<Value = ChanSpec> {
    (
        0..2usize,
        any::<bool>(),
        filter_spec(),
        filter_spec(),
        prop_oneof![Just(None), Just(Some("P")), Just(Some("F"))],
        0..TOPICS,
        any::<bool>(),
    )
        .prop_map(
            |(hub, placeholder, products, features, collection, topic, publishable)| {
                let filtered = products.is_some() || features.is_some() || collection.is_some();
                ChanSpec {
                    hub,
                    placeholder: placeholder && filtered,
                    products,
                    features,
                    collection,
                    topic,
                    publishable,
                }
            },
        )
}

fn to_json(chans: &[ChanSpec]) -> Value {
    let filter = |t: &str, a: &FilterSpec, names: &[&str]| -> Option<Value> {
        a.as_ref().map(|s| match s {
            None => json!({"Type": t, "Values": ["*"]}),
            Some(v) => json!({"Type": t, "Values": v.iter().map(|i| names[*i % names.len()]).collect::<Vec<_>>()}),
        })
    };
    let hubs: Vec<Value> = (0..2)
        .map(|h| {
            let channels: Vec<Value> = chans
                .iter()
                .enumerate()
                .filter(|(_, c)| c.hub == h)
                .map(|(i, c)| {
                    let filters: Vec<Value> = [
                        filter(PRODUCT_CODES, &c.products, PRODUCTS),
                        filter(FEATURE_NAMES, &c.features, FEATURES),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let mut ch = json!({
                        "Name": if c.placeholder { format!("C{i}-[ScopeValue]") } else { format!("C{i}") },
                        "Topic": format!("T{}", c.topic),
                        "IsPublishableByUser": c.publishable,
                        "Filters": filters,
                    });
                    if let Some(col) = c.collection {
                        ch["FilterCollections"] = json!([col]);
                    }
                    ch
                })
                .collect();
            json!({
                "Name": format!("H{h}"),
                "Type": "PubSub",
                "Channels": channels,
                "FilterCollections": [
                    {"Name": "P", "Filters": [{"Type": PRODUCT_CODES, "Values": ["A", "B"]}]},
                    {"Name": "F", "Filters": [{"Type": FEATURE_NAMES, "Values": ["*"]}]},
                ],
            })
        })
        .collect();
    json!({ "Hubs": hubs })
}

/// What one scope type of a channel accepts, after merging its collection.
#[derive(Debug, Clone, PartialEq)]
enum OracleAccept {
    Nothing,
    Any,
    Some(BTreeSet<String>),
}

fn oracle_accept(own: &FilterSpec, names: &[&str], from_collection: OracleAccept) -> OracleAccept {
    let own = match own {
        None => OracleAccept::Nothing,
        Some(None) => OracleAccept::Any,
        Some(Some(v)) => OracleAccept::Some(
            v.iter()
                .map(|i| names[*i % names.len()].to_string())
                .collect(),
        ),
    };
    match (own, from_collection) {
        (OracleAccept::Any, _) | (_, OracleAccept::Any) => OracleAccept::Any,
        (OracleAccept::Nothing, x) | (x, OracleAccept::Nothing) => x,
        (OracleAccept::Some(a), OracleAccept::Some(b)) => {
            OracleAccept::Some(a.union(&b).cloned().collect())
        }
    }
}

/// The seed's priority chain, written independently: the (hub, name) pairs
/// one channel definition yields for a scope set.
fn oracle_names(
    i: usize,
    c: &ChanSpec,
    products: &[&str],
    features: &[&str],
) -> BTreeSet<(usize, String)> {
    let col_products = if c.collection == Some("P") {
        OracleAccept::Some(["A".to_string(), "B".to_string()].into())
    } else {
        OracleAccept::Nothing
    };
    let col_features = if c.collection == Some("F") {
        OracleAccept::Any
    } else {
        OracleAccept::Nothing
    };
    let p = oracle_accept(&c.products, PRODUCTS, col_products);
    let f = oracle_accept(&c.features, FEATURES, col_features);
    let mut out = BTreeSet::new();
    if p == OracleAccept::Nothing && f == OracleAccept::Nothing {
        out.insert((c.hub, format!("C{i}")));
        return out;
    }
    let pick = |a: &OracleAccept, vals: &[&str]| -> Vec<String> {
        vals.iter()
            .filter(|v| match a {
                OracleAccept::Nothing => false,
                OracleAccept::Any => true,
                OracleAccept::Some(set) => set.contains(**v),
            })
            .map(|s| s.to_string())
            .collect()
    };
    let mut matched = pick(&p, products);
    if matched.is_empty() {
        matched = pick(&f, features);
    }
    for m in matched {
        out.insert((
            c.hub,
            if c.placeholder {
                format!("C{i}-{m}")
            } else {
                format!("C{i}")
            },
        ));
    }
    out
}

fn oracle(
    chans: &[ChanSpec],
    topic: usize,
    products: &[&str],
    features: &[&str],
    user_publish: bool,
) -> BTreeSet<(usize, String)> {
    chans
        .iter()
        .enumerate()
        .filter(|(_, c)| c.topic == topic && (!user_publish || c.publishable))
        .flat_map(|(i, c)| oracle_names(i, c, products, features))
        .collect()
}

fn subset(names: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(names.to_vec(), 0..=names.len())
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn hub_names(v: &[switchyard_channels::ResolvedChannel]) -> BTreeSet<(usize, String)> {
    v.iter()
        .map(|c| (c.hub[1..].parse::<usize>().unwrap(), c.name.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn receives_iff_a_channel_is_shared(
        chans in proptest::collection::vec(chan(), 1..8),
        up in subset(PRODUCTS), uf in subset(FEATURES),
        ep in subset(PRODUCTS), ef in subset(FEATURES),
        topic in 0..TOPICS,
        split_scopes in any::<bool>(),
    ) {
        let t = Topology::from_json_str(&to_json(&chans).to_string(), "p.json").unwrap();
        let topic_name = format!("T{topic}");
        let user = Entitlements { tenant: None, products: owned(&up), features: owned(&uf) };
        // The event's scopes, possibly split over several entries of one type
        // and with a type resolution does not know.
        let mut scopes = vec![Scope::features(ef.iter().copied()), Scope { scope_type: "Regions".into(), values: owned(&ep) }];
        if split_scopes && ep.len() > 1 {
            scopes.push(Scope::products(ep[..1].iter().copied()));
            scopes.push(Scope::products(ep[1..].iter().copied()));
        } else {
            scopes.push(Scope::products(ep.iter().copied()));
        }
        let sub = t.resolve_subscriber(&topic_name, &user);
        let ev = t.resolve_event(&topic_name, &scopes, None);

        // Keys are unique and sorted: a subscriber joins each channel once.
        for side in [&sub, &ev] {
            let keys: Vec<&str> = side.iter().map(|c| c.key.as_str()).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&keys, &sorted);
            let well_formed = side.iter().all(|c| c.key == [c.hub.as_str(), c.name.as_str()].join("/") && c.topic == topic_name);
            prop_assert!(well_formed);
        }

        let oracle_user = oracle(&chans, topic, &up, &uf, false);
        let oracle_event = oracle(&chans, topic, &ep, &ef, false);
        prop_assert_eq!(&hub_names(&sub), &oracle_user);
        prop_assert_eq!(&hub_names(&ev), &oracle_event);
        let receives = sub.iter().any(|s| ev.iter().any(|e| e.key == s.key));
        prop_assert_eq!(receives, oracle_user.intersection(&oracle_event).next().is_some());

        // One function both ways: the scopes form gives the same answer.
        prop_assert_eq!(&t.resolve(&topic_name, &user.scopes(), None, Purpose::Subscribe), &sub);
        // A user's own publish only reaches publishable channels.
        let publish = t.resolve_user_publish(&topic_name, &user);
        prop_assert_eq!(hub_names(&publish), oracle(&chans, topic, &up, &uf, true));
    }

    #[test]
    fn tenants_never_share_a_channel(
        chans in proptest::collection::vec(chan(), 1..8),
        up in subset(PRODUCTS),
        uf in subset(FEATURES),
        topic in 0..TOPICS,
        tenants in prop_oneof![Just(("acme", "globex")), Just(("a", "a/H0")), Just(("a%2F", "a/"))],
    ) {
        let t = Topology::from_json_str(&to_json(&chans).to_string(), "p.json").unwrap();
        let topic_name = format!("T{topic}");
        let mk = |tenant: Option<&str>| Entitlements { tenant: tenant.map(str::to_owned), products: owned(&up), features: owned(&uf) };
        let scopes = mk(None).scopes();
        let a = t.resolve_subscriber(&topic_name, &mk(Some(tenants.0)));
        // The same entitlements and scopes in another tenant, or in none,
        // never share a key with tenant a.
        for other in [Some(tenants.1), None] {
            let ev = t.resolve_event(&topic_name, &scopes, other);
            prop_assert!(!a.iter().any(|x| ev.iter().any(|y| x.key == y.key)), "{:?} vs {:?}", tenants.0, other);
        }
        // Within the tenant, the channels are the tenant-less ones, prefixed.
        let same = t.resolve_event(&topic_name, &scopes, Some(tenants.0));
        let plain = t.resolve_event(&topic_name, &scopes, None);
        prop_assert_eq!(hub_names(&same), hub_names(&plain));
        prop_assert_eq!(&a, &same);
    }
}
