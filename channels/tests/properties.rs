//! Property tests of resolution against an independent oracle of the seed's
//! rules: for random topologies, entitlements and event scopes, a user
//! receives an event if and only if the oracle says a channel matches both,
//! never twice (channel keys are unique), and tenants never mix.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use switchyard_channels::{Entitlements, Scope, Topology, FEATURE_NAMES, PRODUCT_CODES};

const PRODUCTS: &[&str] = &["A", "B", "C", "D"];
const FEATURES: &[&str] = &["x", "y", "z"];

#[derive(Debug, Clone)]
struct ChanSpec {
    placeholder: bool,
    /// None: no filter of that type; Some(None): wildcard; Some(Some(set)).
    products: Option<Option<Vec<usize>>>,
    features: Option<Option<Vec<usize>>>,
    topic: usize,
}

fn accept() -> impl Strategy<Value = Option<Option<Vec<usize>>>> {
    prop_oneof![
        Just(None),
        Just(Some(None)),
        proptest::collection::vec(0..4usize, 1..3).prop_map(|v| Some(Some(v))),
    ]
}

fn chan() -> impl Strategy<Value = ChanSpec> {
    (any::<bool>(), accept(), accept(), 0..2usize).prop_map(
        |(placeholder, products, features, topic)| {
            let placeholder = placeholder && (products.is_some() || features.is_some());
            ChanSpec {
                placeholder,
                products,
                features,
                topic,
            }
        },
    )
}

fn to_json(chans: &[ChanSpec]) -> Value {
    let filter = |t: &str, a: &Option<Option<Vec<usize>>>, names: &[&str]| -> Option<Value> {
        a.as_ref().map(|s| match s {
            None => json!({"Type": t, "Values": ["*"]}),
            Some(v) => json!({"Type": t, "Values": v.iter().map(|i| names[*i % names.len()]).collect::<Vec<_>>()}),
        })
    };
    let channels: Vec<Value> = chans
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let filters: Vec<Value> = [
                filter(PRODUCT_CODES, &c.products, PRODUCTS),
                filter(FEATURE_NAMES, &c.features, FEATURES),
            ]
            .into_iter()
            .flatten()
            .collect();
            json!({
                "Name": if c.placeholder { format!("C{i}-[ScopeValue]") } else { format!("C{i}") },
                "Topic": format!("T{}", c.topic),
                "Filters": filters,
            })
        })
        .collect();
    json!({"Hubs": [{"Name": "H", "Channels": channels}]})
}

/// The seed's priority chain, written independently: the set of channel
/// names a scope set maps to for one channel definition.
fn oracle_names(i: usize, c: &ChanSpec, products: &[&str], features: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if c.products.is_none() && c.features.is_none() {
        out.insert(format!("C{i}"));
        return out;
    }
    let pick = |a: &Option<Option<Vec<usize>>>, vals: &[&str], names: &[&str]| -> Vec<String> {
        match a {
            None => vec![],
            Some(None) => vals.iter().map(|s| s.to_string()).collect(),
            Some(Some(set)) => vals
                .iter()
                .filter(|v| set.iter().any(|j| names[*j % names.len()] == **v))
                .map(|s| s.to_string())
                .collect(),
        }
    };
    let mut matched = pick(&c.products, products, PRODUCTS);
    if matched.is_empty() {
        matched = pick(&c.features, features, FEATURES);
    }
    for m in matched {
        out.insert(if c.placeholder {
            format!("C{i}-{m}")
        } else {
            format!("C{i}")
        });
    }
    out
}

fn subset(names: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(names.to_vec(), 0..=names.len())
}

proptest! {
    #[test]
    fn receives_iff_a_channel_is_shared(
        chans in proptest::collection::vec(chan(), 1..6),
        up in subset(PRODUCTS), uf in subset(FEATURES),
        ep in subset(PRODUCTS), ef in subset(FEATURES),
        topic in 0..2usize,
    ) {
        let t = Topology::from_json_str(&to_json(&chans).to_string(), "p.json").unwrap();
        let topic_name = format!("T{topic}");
        let user = Entitlements { tenant: None, products: up.iter().map(|s| s.to_string()).collect(), features: uf.iter().map(|s| s.to_string()).collect() };
        let scopes = vec![
            Scope { scope_type: PRODUCT_CODES.into(), values: ep.iter().map(|s| s.to_string()).collect() },
            Scope { scope_type: FEATURE_NAMES.into(), values: ef.iter().map(|s| s.to_string()).collect() },
        ];
        let sub = t.resolve_subscriber(&topic_name, &user);
        let ev = t.resolve_event(&topic_name, &scopes, None);
        // Keys are unique: a subscriber joins each channel once.
        let keys: BTreeSet<&str> = sub.iter().map(|c| c.key.as_str()).collect();
        prop_assert_eq!(keys.len(), sub.len());
        let receives = sub.iter().any(|s| ev.iter().any(|e| e.key == s.key));
        let mut oracle_user = BTreeSet::new();
        let mut oracle_event = BTreeSet::new();
        for (i, c) in chans.iter().enumerate().filter(|(_, c)| c.topic == topic) {
            oracle_user.extend(oracle_names(i, c, &up, &uf));
            oracle_event.extend(oracle_names(i, c, &ep, &ef));
        }
        let names: BTreeSet<String> = sub.iter().map(|c| c.name.clone()).collect();
        prop_assert_eq!(&names, &oracle_user);
        prop_assert_eq!(receives, oracle_user.intersection(&oracle_event).next().is_some());
    }

    #[test]
    fn tenants_never_share_a_channel(
        chans in proptest::collection::vec(chan(), 1..6),
        up in subset(PRODUCTS),
        topic in 0..2usize,
    ) {
        let t = Topology::from_json_str(&to_json(&chans).to_string(), "p.json").unwrap();
        let topic_name = format!("T{topic}");
        let mk = |tenant: &str| Entitlements { tenant: Some(tenant.into()), products: up.iter().map(|s| s.to_string()).collect(), features: vec![] };
        let a = t.resolve_subscriber(&topic_name, &mk("acme"));
        let scopes = vec![Scope { scope_type: PRODUCT_CODES.into(), values: up.iter().map(|s| s.to_string()).collect() }];
        let ev_other = t.resolve_event(&topic_name, &scopes, Some("globex"));
        prop_assert!(!a.iter().any(|x| ev_other.iter().any(|y| x.key == y.key)));
        let ev_same = t.resolve_event(&topic_name, &scopes, Some("acme"));
        prop_assert_eq!(a.len(), ev_same.len());
    }
}
