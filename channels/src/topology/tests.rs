//! Loading and validation: every rule, and what its message says.

use super::*;

/// The seed case study's example, in exactly its shape.
const SEED: &str = r#"{
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

/// One hub "C" holding the given channels (JSON) and collections.
fn hub(channels: &str, collections: &str) -> String {
    format!(
        r#"{{"Hubs":[{{"Name":"C","Channels":[{channels}],"FilterCollections":[{collections}]}}]}}"#
    )
}

fn channel_err(channels: &str) -> String {
    err(&hub(channels, ""))
}

#[test]
fn the_seed_shape_loads_unchanged() {
    let t = Topology::from_json_str(SEED, "seed.json").unwrap();
    assert_eq!(t.topics(), vec!["News", "SiteVisits"]);
    assert_eq!(t.channel_count(), 2);
    assert_eq!(t.hub_count(), 1);
    assert_eq!(t.topic_lookback("News"), Some(LookBack::CalendarDay(1)));
    assert_eq!(t.topic_lookback("SiteVisits"), None);
    assert!(t.has_topic("News") && !t.has_topic("news"));
}

#[test]
fn yaml_loads_the_same_shape() {
    let yaml = "Hubs:\n  - Name: Content\n    Type: PubSub\n    Channels:\n      - Name: News-[ScopeValue]\n        Topic: News\n        IsPublishableByUser: false\n        Filters:\n          - Type: Product Codes\n            Values: ['*']\n        LookBack: {IsEnabled: true, TtlPeriodType: CalendarDay, TtlValue: 1}\n      - Name: Site Visit Count\n        Topic: SiteVisits\n        IsPublishableByUser: false\n        Filters: []\n    FilterCollections:\n      - Name: AllProducts\n        Filters: [{Type: Product Codes, Values: ['*']}]\n";
    let y = Topology::from_yaml_str(yaml, "t.yaml").unwrap();
    let j = Topology::from_json_str(SEED, "seed.json").unwrap();
    assert_eq!(y.file(), j.file());
}

#[test]
fn load_picks_the_format_by_extension() {
    let dir = std::env::temp_dir().join(format!("sy-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = "Hubs:\n  - Name: C\n    Channels:\n      - {Name: A, Topic: A}\n";
    for (name, text) in [
        ("t.json", SEED),
        ("t.yaml", yaml),
        ("t.yml", yaml),
        ("t.conf", SEED),
        ("t.conf2", yaml),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        assert!(Topology::load(&p).is_ok(), "{name}");
    }
    // JSON content in a .yaml file is fine too (YAML is a superset).
    let p = dir.join("json-in.yaml");
    std::fs::write(&p, SEED).unwrap();
    assert!(Topology::load(&p).is_ok());
    // Unknown extension, broken JSON: the JSON diagnosis.
    let p = dir.join("broken.conf");
    std::fs::write(&p, "{\"Hubs\": [").unwrap();
    let e = Topology::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("broken.conf: Hubs: EOF while parsing") && e.contains("line 1"),
        "{e}"
    );
    // Missing file.
    let e = Topology::load(&dir.join("nope.json")).unwrap_err();
    assert!(matches!(e, TopologyError::Io { .. }));
    assert!(e.to_string().contains("nope.json: cannot read"), "{e}");
    assert!(e.to_string().contains("fix:"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    let e = err(
        "{\"Hubs\": [{\"Name\": \"C\",\n \"Channels\": [{\"Name\": \"N\", \"Topic\": \"T\",}]}]}",
    );
    assert!(e.starts_with("t.json: Hubs[0].Channels[0]"), "{e}");
    assert!(e.contains("trailing comma (line 2, column"), "{e}");
    assert!(e.contains("fix: correct the syntax"), "{e}");
    // Location is not repeated.
    assert_eq!(e.matches("line 2").count(), 1, "{e}");
}

#[test]
fn yaml_syntax_errors_give_line_and_column() {
    let e = Topology::from_yaml_str("Hubs:\n  - Name: C\n    Channels: [\n", "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.yaml: "), "{e}");
    assert!(e.contains("line"), "{e}");
    let e = Topology::from_yaml_str(
        "Hubs:\n  - Name: C\n    Channels:\n      - Name: N\n        Topic: [x]\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("t.yaml: Hubs[0].Channels[0].Topic: invalid type"),
        "{e}"
    );
    assert!(e.contains("(line 5, column 16)"), "{e}");
    assert!(e.contains("fix: give the value the expected type"), "{e}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = channel_err(r#"{"Name":"N","Topic":"T","IsPublishable":true}"#);
    assert!(
        e.contains("t.json: Hubs[0].Channels[0].IsPublishable: unknown field `IsPublishable`"),
        "{e}"
    );
    assert!(
        e.contains("fix: remove the field or correct its spelling"),
        "{e}"
    );
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Codes","Value":["*"]}]}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].Filters[0].Value: unknown field `Value`"),
        "{e}"
    );
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","LookBack":{"IsEnabled":true,"TtlPeriod":"Minutes","TtlValue":1}}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].LookBack.TtlPeriod: unknown field"),
        "{e}"
    );
    let e = err(r#"{"Hubs":[],"Version":2}"#);
    assert!(
        e.contains("t.json: Version: unknown field `Version`"),
        "{e}"
    );
    // YAML: same rule, same path, no doubled path from serde_yaml.
    let e = Topology::from_yaml_str("Hubs:\n  - Name: C\n    Chanels: []\n", "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.yaml: Hubs[0].Chanels: unknown field `Chanels`"),
        "{e}"
    );
    assert!(e.contains("(line 3, column 5)"), "{e}");
}

#[test]
fn missing_and_mistyped_fields() {
    let e = channel_err(r#"{"Topic":"T"}"#);
    assert!(
        e.contains("Hubs[0].Channels[0]: missing field `Name`"),
        "{e}"
    );
    assert!(e.contains("fix: add the required field"), "{e}");
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Codes","Values":"CHLT"}]}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].Filters[0].Values: invalid type"),
        "{e}"
    );
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","LookBack":{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":-1}}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].LookBack.TtlValue: invalid value"),
        "{e}"
    );
}

#[test]
fn no_hubs() {
    let e = err(r#"{"Hubs":[]}"#);
    assert!(
        e.contains("t.json: Hubs: no hubs (fix: define at least one hub"),
        "{e}"
    );
}

#[test]
fn hub_names_are_present_and_unique() {
    let e = err(r#"{"Hubs":[{"Name":"C","Channels":[]},{"Name":"C","Channels":[]},{"Name":" "}]}"#);
    assert!(e.contains("Hubs[1].Name: duplicate hub name \"C\""), "{e}");
    assert!(e.contains("Hubs[2].Name: empty hub name"), "{e}");
}

#[test]
fn unknown_filter_type() {
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Code","Values":["*"]}]}"#,
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
}

#[test]
fn empty_values_and_empty_value() {
    let e =
        channel_err(r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Codes","Values":[]}]}"#);
    assert!(
        e.contains("Hubs[0].Channels[0].Filters[0].Values: empty Values list"),
        "{e}"
    );
    assert!(
        e.contains("[\\\"*\\\"] for any") || e.contains("[\"*\"] for any"),
        "{e}"
    );
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Codes","Values":["A",""]}]}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].Filters[0].Values[1]: an empty value"),
        "{e}"
    );
}

#[test]
fn wildcard_mixed_with_values() {
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Filters":[{"Type":"Product Codes","Values":["*","CHLT"]}]}"#,
    );
    assert!(
        e.contains("Hubs[0].Channels[0].Filters[0].Values: \"*\" mixed with specific values"),
        "{e}"
    );
}

#[test]
fn placeholder_without_filters() {
    let e = channel_err(r#"{"Name":"N-[ScopeValue]","Topic":"T"}"#);
    assert!(
        e.contains(
            "Hubs[0].Channels[0].Name: [ScopeValue] placeholder in a channel without filters"
        ),
        "{e}"
    );
    assert!(e.contains("fix: add a filter"), "{e}");
    // Filters from a collection count.
    let ok = hub(
        r#"{"Name":"N-[ScopeValue]","Topic":"T","FilterCollection":"P"}"#,
        r#"{"Name":"P","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    );
    assert!(Topology::from_json_str(&ok, "t.json").is_ok());
}

#[test]
fn misspelt_placeholder() {
    let e = channel_err(
        r#"{"Name":"N-[Scopevalue]","Topic":"T","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    );
    assert!(
        e.contains(
            "Hubs[0].Channels[0].Name: [Scopevalue] looks like a misspelt [ScopeValue] placeholder"
        ),
        "{e}"
    );
    // Other brackets are fine.
    let ok = hub(r#"{"Name":"[Beta] News","Topic":"T"}"#, "");
    assert!(Topology::from_json_str(&ok, "t.json").is_ok());
}

#[test]
fn duplicate_channel_names_in_a_hub() {
    let e = channel_err(r#"{"Name":"N","Topic":"T"},{"Name":"N","Topic":"U"}"#);
    assert!(
        e.contains("Hubs[0].Channels[1].Name: duplicate channel name \"N\" in hub \"C\""),
        "{e}"
    );
    let e = channel_err(r#"{"Name":"","Topic":"T"}"#);
    assert!(
        e.contains("Hubs[0].Channels[0].Name: empty channel name"),
        "{e}"
    );
    // The same name in two hubs is two channels.
    let ok = r#"{"Hubs":[{"Name":"A","Channels":[{"Name":"N","Topic":"T"}]},{"Name":"B","Channels":[{"Name":"N","Topic":"T"}]}]}"#;
    let t = Topology::from_json_str(ok, "t.json").unwrap();
    assert_eq!(t.resolve_event("T", &[], None).len(), 2);
}

#[test]
fn templates_that_could_mix_topics() {
    let e = channel_err(
        r#"{"Name":"Alerts-[ScopeValue]","Topic":"Alerts","Filters":[{"Type":"Product Codes","Values":["*"]}]},
           {"Name":"Alerts-Daily","Topic":"Digest"}"#,
    );
    assert!(e.contains("Hubs[0].Channels[0].Name: channel \"Alerts-[ScopeValue]\" (topic \"Alerts\") can expand to the same name as channel \"Alerts-Daily\" (Channels[1], topic \"Digest\")"), "{e}");
    let e = channel_err(
        r#"{"Name":"A-[ScopeValue]","Topic":"X","Filters":[{"Type":"Product Codes","Values":["*"]}]},
           {"Name":"A-B-[ScopeValue]","Topic":"Y","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // Found from either side, reported once.
    let e = channel_err(
        r#"{"Name":"A-B-[ScopeValue]","Topic":"Y","Filters":[{"Type":"Product Codes","Values":["*"]}]},
           {"Name":"A-[ScopeValue]","Topic":"X","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("Hubs[0].Channels[0].Name: channel \"A-B-[ScopeValue]\""),
        "{e}"
    );
    // Placeholder first: the suffix decides.
    let e = channel_err(
        r#"{"Name":"[ScopeValue]-News","Topic":"News","Filters":[{"Type":"Product Codes","Values":["*"]}]},
           {"Name":"Daily-News","Topic":"Digest"},
           {"Name":"[ScopeValue]-Alerts","Topic":"Alerts","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("as channel \"Daily-News\""), "{e}");
    // Same topic: harmless (the keys merge); distinct prefixes: fine.
    let ok = hub(
        r#"{"Name":"News-[ScopeValue]","Topic":"News","Filters":[{"Type":"Product Codes","Values":["*"]}]},
           {"Name":"News-Daily","Topic":"News"},
           {"Name":"Chat-[ScopeValue]","Topic":"Chat","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
        "",
    );
    assert!(Topology::from_json_str(&ok, "t.json").is_ok());
}

#[test]
fn topics_must_be_named_exactly() {
    let e = channel_err(r#"{"Name":"N","Topic":""}"#);
    assert!(e.contains("Hubs[0].Channels[0].Topic: empty topic"), "{e}");
    let e = channel_err(r#"{"Name":"N","Topic":"News "}"#);
    assert!(
        e.contains("Hubs[0].Channels[0].Topic: topic \"News \" has leading or trailing spaces"),
        "{e}"
    );
}

#[test]
fn unknown_collection_reference() {
    let e = err(&hub(
        r#"{"Name":"N","Topic":"T","FilterCollections":["AllProducts","Nope"]}"#,
        r#"{"Name":"AllProducts","Filters":[{"Type":"Product Codes","Values":["*"]}]}"#,
    ));
    assert!(
        e.contains("Hubs[0].Channels[0].FilterCollections[1]: unknown filter collection \"Nope\" (fix: use one of Hubs[0].FilterCollections (AllProducts)"),
        "{e}"
    );
    let e = channel_err(r#"{"Name":"N","Topic":"T","FilterCollection":"Nope"}"#);
    assert!(
        e.contains("Hubs[0].Channels[0].FilterCollection: unknown filter collection \"Nope\""),
        "{e}"
    );
    assert!(e.contains("collections are per hub"), "{e}");
}

#[test]
fn collections_are_validated_once_where_defined() {
    let e = err(&hub(
        r#"{"Name":"A","Topic":"T","FilterCollection":"P"},{"Name":"B","Topic":"T","FilterCollection":"P"}"#,
        r#"{"Name":"P","Filters":[{"Type":"Products","Values":["*"]}]},{"Name":"P","Filters":[{"Type":"Product Codes","Values":["*"]}]},{"Name":"E","Filters":[]}"#,
    ));
    assert!(
        e.contains(
            "Hubs[0].FilterCollections[0].Filters[0].Type: unknown filter type \"Products\""
        ),
        "{e}"
    );
    assert_eq!(e.matches("unknown filter type").count(), 1, "{e}");
    assert!(
        e.contains("Hubs[0].FilterCollections[1].Name: duplicate filter collection name \"P\""),
        "{e}"
    );
    assert!(
        e.contains("Hubs[0].FilterCollections[2].Filters: a filter collection without filters"),
        "{e}"
    );
}

#[test]
fn lookback_rules() {
    let lb = |lb: &str| channel_err(&format!(r#"{{"Name":"N","Topic":"T","LookBack":{lb}}}"#));
    let e = lb(r#"{"IsEnabled":true,"TtlPeriodType":"Weeks","TtlValue":1}"#);
    assert!(e.contains("Hubs[0].Channels[0].LookBack.TtlPeriodType: unknown TtlPeriodType \"Weeks\" (fix: use \"CalendarDay\" or \"Minutes\")"), "{e}");
    let e = lb(r#"{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":0}"#);
    assert!(
        e.contains(
            "Hubs[0].Channels[0].LookBack.TtlValue: enabled lookback without a positive TtlValue"
        ),
        "{e}"
    );
    let e = lb(r#"{"IsEnabled":true,"TtlPeriodType":"CalendarDay"}"#);
    assert!(
        e.contains("LookBack.TtlValue: enabled lookback without a positive TtlValue"),
        "{e}"
    );
    let e = lb(r#"{"IsEnabled":true,"TtlValue":3}"#);
    assert!(
        e.contains("LookBack.TtlPeriodType: enabled lookback without TtlPeriodType"),
        "{e}"
    );
    let e = lb(r#"{"IsEnabled":true,"TtlPeriodType":"CalendarDay","TtlValue":100000}"#);
    assert!(
        e.contains("LookBack.TtlValue: TtlValue 100000 is too large (fix: use at most 3660 days)"),
        "{e}"
    );
    // A disabled lookback needs no TTL, but a misspelt period is still caught.
    assert!(Topology::from_json_str(
        &hub(
            r#"{"Name":"N","Topic":"T","LookBack":{"IsEnabled":false}}"#,
            ""
        ),
        "t.json"
    )
    .is_ok());
    let e = lb(r#"{"IsEnabled":false,"TtlPeriodType":"Days","TtlValue":1}"#);
    assert!(e.contains("unknown TtlPeriodType \"Days\""), "{e}");
    let t = Topology::from_json_str(
        &hub(r#"{"Name":"N","Topic":"T","LookBack":{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":45}}"#, ""),
        "t.json",
    )
    .unwrap();
    assert_eq!(t.topic_lookback("T"), Some(LookBack::Minutes(45)));
}

#[test]
fn retention_and_ephemeral_rules() {
    let e = channel_err(r#"{"Name":"N","Topic":"T","RetentionMinutes":0}"#);
    assert!(
        e.contains("Hubs[0].Channels[0].RetentionMinutes: zero retention"),
        "{e}"
    );
    let e = channel_err(r#"{"Name":"N","Topic":"T","RetentionMinutes":4294967295}"#);
    assert!(
        e.contains("RetentionMinutes 4294967295 is too large"),
        "{e}"
    );
    let e = channel_err(
        r#"{"Name":"N","Topic":"T","Ephemeral":true,"LookBack":{"IsEnabled":true,"TtlPeriodType":"Minutes","TtlValue":5}}"#,
    );
    assert!(e.contains("Hubs[0].Channels[0].Ephemeral: an ephemeral channel cannot have an enabled LookBack or RetentionMinutes"), "{e}");
    let e = channel_err(r#"{"Name":"N","Topic":"T","Ephemeral":true,"RetentionMinutes":5}"#);
    assert!(e.contains("Hubs[0].Channels[0].Ephemeral"), "{e}");
    let t = Topology::from_json_str(
        &hub(r#"{"Name":"N","Topic":"T","RetentionMinutes":90}"#, ""),
        "t.json",
    )
    .unwrap();
    let r = t.resolve_event("T", &[], None);
    assert_eq!(r[0].retention, Some(Duration::from_secs(90 * 60)));
    assert!(!r[0].ephemeral);
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = channel_err(r#"{"Name":"A-[ScopeValue]","Topic":"T"},{"Name":"B","Topic":""}"#);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(
        e.lines()
            .all(|l| l.starts_with("t.json: Hubs[0].Channels[") && l.contains("(fix: ")),
        "{e}"
    );
    let err =
        Topology::from_json_str(&hub(r#"{"Name":"B","Topic":""}"#, ""), "t.json").unwrap_err();
    assert_eq!(err.issues().len(), 1);
    assert_eq!(err.issues()[0].path, "Hubs[0].Channels[0].Topic");
}

#[test]
fn collections_merge_into_channel_filters() {
    let t = Topology::from_json_str(
        &hub(
            r#"{"Name":"N-[ScopeValue]","Topic":"T","FilterCollections":["P"],"FilterCollection":"Q",
                "Filters":[{"Type":"Feature Names","Values":["Beta"]}]}"#,
            r#"{"Name":"P","Filters":[{"Type":"Product Codes","Values":["A","B"]}]},
               {"Name":"Q","Filters":[{"Type":"Product Codes","Values":["C"]}]}"#,
        ),
        "t.json",
    )
    .unwrap();
    let c = &t.channels[0];
    assert_eq!(
        c.products,
        Some(Accept::Only(["A", "B", "C"].map(String::from).into()))
    );
    assert_eq!(c.features, Some(Accept::Only(["Beta".to_owned()].into())));
}

#[test]
fn presence_is_opt_in_per_channel_in_json_and_yaml() {
    let t = Topology::from_json_str(
        &hub(
            r#"{"Name":"Room-[ScopeValue]","Topic":"Rooms","Presence":true,
                "Filters":[{"Type":"Product Codes","Values":["*"]}]},
               {"Name":"Lobby","Topic":"Lobby"}"#,
            "",
        ),
        "t.json",
    )
    .unwrap();
    assert!(t.topic_has_presence("Rooms"));
    assert!(!t.topic_has_presence("Lobby"));
    assert!(!t.topic_has_presence("Nothing"));
    let ent = crate::Entitlements {
        tenant: Some("acme".into()),
        products: vec!["CHLT".into()],
        features: vec![],
    };
    let r = t.resolve_subscriber("Rooms", &ent);
    assert!(r[0].presence);
    assert_eq!(
        (r[0].name.as_str(), r[0].key.as_str()),
        ("Room-CHLT", "acme/C/Room-CHLT")
    );
    assert!(!t.resolve_subscriber("Lobby", &ent)[0].presence);
    let yaml = "Hubs:\n  - Name: C\n    Channels:\n      - Name: Lobby\n        Topic: Lobby\n        Presence: true\n";
    let t = Topology::from_yaml_str(yaml, "t.yaml").unwrap();
    assert!(t.topic_has_presence("Lobby"));
    // Not a boolean: a parse error naming the field.
    let e = err(&hub(r#"{"Name":"L","Topic":"L","Presence":"yes"}"#, ""));
    assert!(e.contains("Presence") || e.contains("invalid type"), "{e}");
}
