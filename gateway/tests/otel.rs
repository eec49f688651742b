//! OpenTelemetry end to end: the bridge and a gateway export their spans
//! over OTLP/HTTP to a receiver inside the test (testkit's
//! [`OtlpReceiver`]); a Kafka record produced with a W3C `traceparent`
//! must come out as one trace that joins the producer's span to the
//! delivery on the gateway.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use switchyard_testkit::{
    ids, news, require_servers, token, Client, OtlpReceiver, ReceivedSpan, Stack, StackOptions,
};

const T: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn find<'a>(spans: &'a [ReceivedSpan], name: &str, trace: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name && s.trace_id == trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_joins_a_produced_record_to_its_delivery() {
    require_servers();
    let otlp = OtlpReceiver::start().await.unwrap();
    eprintln!("otlp receiver at {}", otlp.endpoint());
    let s = Stack::start(StackOptions {
        gateways: 1,
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp.endpoint()),
            // Export within a tenth of a second rather than five.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    eprintln!("stack up in {}", s.dir.display());
    let mut c = Client::connect(
        &s.gateway(0).ws_url(),
        &token("user-a", &["CHLT"], &[], 600),
    )
    .await
    .unwrap();
    assert_eq!(
        c.subscribe("News", None).await.unwrap()["type"],
        "subscribed"
    );

    let traceparent = format!("00-{TRACE}-{PRODUCER_SPAN}-01");
    let record = news("traced-1", &["CHLT"], 1).to_string();
    s.produce_with_headers(
        "News",
        record.as_bytes(),
        &[
            ("traceparent", traceparent.as_str()),
            ("content-type", "application/json"),
        ],
    )
    .await
    .unwrap();
    // And one without a trace context: the bridge starts a root for it.
    let untraced = news("untraced-2", &["CHLT"], 2).to_string();
    s.produce_with_headers("News", untraced.as_bytes(), &[])
        .await
        .unwrap();
    eprintln!("produced");
    let got = c.messages(2, T).await.unwrap();
    assert_eq!(ids(&got), ["traced-1", "untraced-2"]);

    let spans = otlp
        .wait_for(T, |sp| {
            find(sp, "bridge.event", TRACE).is_some()
                && find(sp, "gateway.fanout", TRACE).is_some()
                && find(sp, "gateway.write", TRACE).is_some()
        })
        .await
        .unwrap();
    let event = find(&spans, "bridge.event", TRACE).unwrap();
    let fanout = find(&spans, "gateway.fanout", TRACE).unwrap();
    let write = find(&spans, "gateway.write", TRACE).unwrap();
    // Producer → bridge → gateway fan-out → socket write, one trace.
    assert_eq!(event.service, "switchyard-bridge");
    assert_eq!(event.parent_span_id, PRODUCER_SPAN, "{event:?}");
    assert_eq!(event.attribute("switchyard.event_id"), Some("traced-1"));
    assert_eq!(fanout.service, "switchyard-gateway");
    assert_eq!(fanout.parent_span_id, event.span_id, "{fanout:?}");
    assert_eq!(fanout.attribute("recipients"), Some("1"), "{fanout:?}");
    assert_eq!(write.parent_span_id, fanout.span_id, "{write:?}");
    assert_eq!(write.attribute("switchyard.path"), Some("live"));

    // The batch span is linked to the producer's context, and the event span
    // to the batch span; the append and the publish are its children.
    let batch = spans
        .iter()
        .find(|b| {
            b.name == "bridge.batch"
                && b.links
                    .contains(&(TRACE.to_owned(), PRODUCER_SPAN.to_owned()))
        })
        .unwrap_or_else(|| panic!("no batch span linked to the producer: {spans:#?}"));
    assert!(event
        .links
        .contains(&(batch.trace_id.clone(), batch.span_id.clone())));
    let spans = otlp
        .wait_for(T, |sp| {
            ["cursorlog.append", "livefeed.publish"].iter().all(|n| {
                sp.iter()
                    .any(|c| c.name == *n && c.parent_span_id == batch.span_id)
            })
        })
        .await
        .unwrap();

    // The untraced record's delivery continues the batch span it was in.
    let untraced_fanout = spans
        .iter()
        .filter(|f| f.name == "gateway.fanout" && f.attribute("event_id") == Some("untraced-2"))
        .collect::<Vec<_>>();
    for f in &untraced_fanout {
        let parent = spans.iter().find(|p| p.span_id == f.parent_span_id);
        assert!(
            parent.is_some_and(|p| p.name == "bridge.batch" && p.trace_id == f.trace_id),
            "{f:?}"
        );
    }
    assert!(!untraced_fanout.is_empty(), "{spans:#?}");
}
