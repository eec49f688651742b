//! The ingest pipeline, in three overlapping stages: the reader gathers a
//! Kafka batch, decodes, validates and resolves it; the writer appends it in
//! one PostgreSQL transaction, writes rejects to the DLQ and stores the Kafka
//! offsets; the publisher puts the committed events on Redis. Batches pass
//! from one stage to the next in order.
//!
//! Invariant: a Kafka offset is stored only after every record up to it is
//! durable somewhere: in the cursor log (committed), in the DLQ (acknowledged
//! by the broker), or counted as resolving to no channel. Only a record the
//! database refuses as data (see [`LogError::rejects_data`]) goes to the DLQ:
//! any other failure stalls and retries. While PostgreSQL or the DLQ is
//! unavailable the assigned partitions are paused through [`PauseControl`]
//! (the consumer keeps polling so it stays in its group) and the batch is
//! retried, so memory stays bounded by the batches in flight plus the
//! bounded [`Carry`].

use crate::config::BridgeConfig;
use crate::dlq;
use crate::envelope::{self, DomainEvent, Rejection};
use crate::metrics as m;
use crate::pause::{Carry, PauseControl, Stage};
use crate::statistics::ConsumerHealth;
use futures::FutureExt as _;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::KeyValue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_channels::{ResolvedChannel, TopologyHandle};
use switchyard_cursorlog::route::{route, Draft, Route};
use switchyard_cursorlog::shard::shard;
use switchyard_cursorlog::{CursorLog, Entry, LogError, LogEvent, NewEvent};
use switchyard_livefeed::Publisher;
use switchyard_ops::backoff::Backoff;
use switchyard_ops::tracecontext;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Bytes the reader may park while consumption is paused (see [`Carry`]).
const CARRY_MAX_BYTES: usize = 32 << 20;

/// Producer contexts a batch span links to at most (the SDK's default link
/// limit); the events' own spans are children of theirs regardless.
const MAX_BATCH_LINKS: usize = 128;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The consumer context: commits stored offsets synchronously when
/// partitions are revoked, applies the pause state to assigned partitions,
/// reports commit failures, and hands librdkafka's statistics to
/// [`ConsumerHealth`] (metrics and readiness).
#[derive(Debug)]
pub struct BridgeContext {
    pause: Arc<PauseControl>,
    kafka: Arc<ConsumerHealth>,
}

impl BridgeContext {
    pub fn new(pause: Arc<PauseControl>, kafka: Arc<ConsumerHealth>) -> Self {
        BridgeContext { pause, kafka }
    }
}

impl ClientContext for BridgeContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.kafka.record_json(statistics);
    }
}

impl ConsumerContext for BridgeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked; committing stored offsets"
            );
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke found nothing to commit");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            self.pause.on_assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit did not complete");
        }
    }
}

/// The pipeline's parts.
pub struct Pipeline {
    pub consumer: StreamConsumer<BridgeContext>,
    pub dlq: FutureProducer,
    pub log: CursorLog,
    pub publisher: Publisher,
    pub topology: TopologyHandle,
    pub cfg: BridgeConfig,
    pub pause: Arc<PauseControl>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

struct Cancelled;

/// Why the writer did not finish a batch.
enum Unfinished {
    Cancelled,
    /// The channel ids were resolved from a stale cache (the database was
    /// restored or failed over); the batch must be prepared again.
    StaleChannels(Vec<OwnedMessage>),
}

impl From<Cancelled> for Unfinished {
    fn from(_: Cancelled) -> Self {
        Unfinished::Cancelled
    }
}

/// A record resolved to its channels.
struct Resolved {
    msg_index: usize,
    event: DomainEvent,
    channels: Vec<ResolvedChannel>,
}

/// A batch decoded and resolved, waiting for the writer stage.
struct Prepared {
    batch: Vec<OwnedMessage>,
    rejected: Vec<(usize, Rejection)>,
    new_events: Vec<NewEvent>,
    msg_of_event: HashMap<String, usize>,
    ephemeral_only: Vec<LogEvent>,
    ephemeral_extra: HashMap<String, Vec<Entry>>,
    started: Instant,
    /// When the batch was read from Kafka (ms since the epoch).
    received_at_ms: i64,
    /// The producers' trace contexts (`traceparent` headers) by event id;
    /// empty when tracing is off.
    parents: HashMap<String, SpanContext>,
}

/// A committed batch on its way to Redis: the events and the spans that end
/// once they are published.
struct Committed {
    live: Vec<LogEvent>,
    /// `bridge.batch`: linked to every producer context of the batch.
    span: tracing::Span,
    /// One `bridge.event` span per event with a producer context, a child of
    /// it (so the producer's trace goes on to the gateways' delivery).
    events: Vec<opentelemetry::global::BoxedSpan>,
}

impl Pipeline {
    /// Runs until `cancel` fires, then commits stored offsets synchronously.
    ///
    /// The stages overlap: the reader gathers, decodes and resolves the next
    /// batch while the writer commits the previous one and the publisher
    /// puts the one before on Redis (at most two batches wait between two
    /// stages). Each stage handles batches strictly in order, so sequence,
    /// offset and publish order are those of a single loop.
    pub async fn run(self, cancel: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(2);
        // Batches handed to the writer and not yet committed (or given up):
        // while there are any, the reader lingers to fill the next one.
        let unfinished = AtomicUsize::new(0);
        let reader = async {
            let mut carry = Carry::new(self.cfg.batch_max, CARRY_MAX_BYTES);
            loop {
                let batch = self.gather(&mut carry, &unfinished, &cancel).await;
                if batch.is_empty() {
                    if cancel.is_cancelled() {
                        break;
                    }
                    continue;
                }
                let Ok(prepared) = self.prepare(batch, Some(&mut carry), &cancel).await else {
                    break;
                };
                // Wait for the writer; while it is stalled on a dependency the
                // partitions are paused, so polling (to stay in the group)
                // only drains what was fetched before into `carry`.
                let permit = loop {
                    tokio::select! {
                        p = tx.reserve() => break p.ok(),
                        _ = cancel.cancelled() => break None,
                        r = self.consumer.recv(), if self.pause.is_paused() => {
                            if let Ok(msg) = r {
                                self.park(&mut carry, msg.detach());
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                };
                match permit {
                    Some(p) => {
                        unfinished.fetch_add(1, Ordering::AcqRel);
                        p.send(prepared);
                    }
                    None => break,
                }
            }
            drop(tx);
        };
        // Publishing is the third stage: the next batch's transaction need
        // not wait for Redis. Batches are published in commit order.
        let (pub_tx, mut pub_rx) = tokio::sync::mpsc::channel::<Committed>(2);
        let writer = async {
            let mut stale = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            while let Some(mut prepared) = rx.recv().await {
                let records = prepared.batch.len();
                let live = loop {
                    match self.commit(prepared, &cancel).await {
                        Ok(live) => {
                            stale.reset();
                            break Some(live);
                        }
                        Err(Unfinished::Cancelled) => break None,
                        Err(Unfinished::StaleChannels(batch)) => {
                            // The log dropped its id cache; resolve again.
                            // Paused meanwhile: if this repeats, the
                            // database keeps losing channel rows.
                            self.pause.stall(&self.consumer, Stage::Writer);
                            metrics::counter!(m::PG_ERRORS).increment(1);
                            let delay = stale.next_delay();
                            tracing::warn!(
                                records,
                                retry_in_ms = delay.as_millis() as u64,
                                "channel ids are stale (database restored or failed over); resolving the batch again"
                            );
                            tokio::select! {
                                _ = cancel.cancelled() => break None,
                                _ = tokio::time::sleep(delay) => {}
                            }
                            match self.prepare(batch, None, &cancel).await {
                                Ok(p) => prepared = p,
                                Err(Cancelled) => break None,
                            }
                        }
                    }
                };
                unfinished.fetch_sub(1, Ordering::AcqRel);
                let Some(live) = live else {
                    tracing::info!(
                        records,
                        "shutdown during retry; the batch will be redelivered"
                    );
                    break;
                };
                if pub_tx.send(live).await.is_err() {
                    break;
                }
            }
            drop(pub_tx);
        };
        let publisher = async {
            while let Some(c) = pub_rx.recv().await {
                let events = c.live.len();
                self.publisher
                    .publish(&c.live)
                    .instrument(tracing::info_span!(parent: &c.span, "livefeed.publish", events))
                    .await;
                let now = now_ms();
                for ev in &c.live {
                    m::stage("publish", ev.live.committed_at_ms, now);
                }
                for mut span in c.events {
                    span.end();
                }
                // Dropping `c.span` ends the batch span.
            }
        };
        tokio::join!(reader, writer, publisher);
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("final offset commit done"),
            Err(e) => tracing::info!(error = %e, "final offset commit had nothing to do"),
        }
    }

    /// Gathers the next batch: waits for a first record, takes whatever
    /// else is already fetched, and lingers up to `batch_linger` for more
    /// only while an earlier batch is still `unfinished` in the writer. A
    /// batch that would wait for the writer anyway loses nothing by
    /// filling meanwhile; one the idle writer could take at once would only
    /// be delayed, which on a quiet stream added the whole linger to every
    /// event.
    async fn gather(
        &self,
        carry: &mut Carry,
        unfinished: &AtomicUsize,
        cancel: &CancellationToken,
    ) -> Vec<OwnedMessage> {
        let max = self.cfg.batch_max;
        let mut batch = carry.take(max);
        if !carry.is_full() {
            self.pause.recover(&self.consumer, Stage::Carry);
        }
        if batch.len() >= max {
            return batch;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return batch,
                r = self.consumer.recv() => match r {
                    Ok(msg) => batch.push(msg.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return batch;
                    }
                },
            }
        }
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(msg)) => batch.push(msg.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    return batch;
                }
                None => break,
            }
        }
        if batch.len() >= max || unfinished.load(Ordering::Acquire) == 0 {
            return batch;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.batch_linger;
        while batch.len() < max {
            tokio::select! {
                biased;
                r = self.consumer.recv() => match r {
                    Ok(msg) => batch.push(msg.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        batch
    }

    /// Parks a record read while paused; a full carry holds consumption.
    fn park(&self, carry: &mut Carry, msg: OwnedMessage) {
        if carry.push(msg) {
            self.pause.stall(&self.consumer, Stage::Carry);
        }
    }

    /// Stage one: decode, validate, resolve and look up channel ids. The
    /// reader passes its `carry` (it keeps polling while it retries); the
    /// writer, preparing a batch again, passes `None`.
    async fn prepare(
        &self,
        batch: Vec<OwnedMessage>,
        carry: Option<&mut Carry>,
        cancel: &CancellationToken,
    ) -> Result<Prepared, Cancelled> {
        let started = Instant::now();
        let received_at_ms = now_ms();
        let traced = tracecontext::enabled();
        let mut parents: HashMap<String, SpanContext> = HashMap::new();
        if carry.is_some() {
            // The reader's first pass (a batch prepared again is not new).
            for msg in &batch {
                let at = msg.timestamp().to_millis().unwrap_or(0);
                m::stage("receive", at, received_at_ms);
            }
        }
        let topology = self.topology.current();
        let mut rejected: Vec<(usize, Rejection)> = Vec::new();
        let mut resolved: Vec<Resolved> = Vec::new();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let max_age_ms = i64::try_from(self.cfg.max_record_age.as_millis()).unwrap_or(i64::MAX);
        for (i, msg) in batch.iter().enumerate() {
            // Duplicates are detected against the log, which forgets an
            // event when retention sweeps it: a record that old could be a
            // re-delivery of one already delivered, and is not stored.
            if let Some(ts) = msg.timestamp().to_millis() {
                let age = now_ms.saturating_sub(ts);
                if age > max_age_ms {
                    m::consumed(&topology, None);
                    rejected.push((
                        i,
                        Rejection::new(
                            "expired",
                            format!(
                                "the record's Kafka timestamp is {} s old, past SWITCHYARD_MAX_RECORD_AGE_MINUTES ({} min): its event may already have left the log with retention, so it could be a duplicate of one clients received; re-publish it (with a fresh timestamp) if it must be delivered",
                                age / 1000,
                                max_age_ms / 60_000
                            ),
                        ),
                    ));
                    continue;
                }
            }
            let header_ct = content_type_header(msg);
            match envelope::decode(
                msg.payload(),
                header_ct.as_deref(),
                self.cfg.max_event_bytes,
            ) {
                Err(r) => {
                    m::consumed(&topology, None);
                    rejected.push((i, r));
                }
                Ok(ev) => {
                    m::consumed(&topology, Some(&ev.topic));
                    if !topology.has_topic(&ev.topic) {
                        rejected.push((
                            i,
                            Rejection::new(
                                "unknown_topic",
                                format!("topic {:?} is not in the topology", ev.topic),
                            ),
                        ));
                        continue;
                    }
                    let tenant = (!ev.tenant.is_empty()).then_some(ev.tenant.as_str());
                    let channels = topology.resolve_event(&ev.topic, &ev.scopes, tenant);
                    if channels.len() > self.cfg.max_channels_per_event {
                        rejected.push((
                            i,
                            Rejection::new(
                                "too_many_channels",
                                format!(
                                    "the event resolves to {} channels, the limit is {} (SWITCHYARD_MAX_CHANNELS_PER_EVENT)",
                                    channels.len(),
                                    self.cfg.max_channels_per_event
                                ),
                            ),
                        ));
                        continue;
                    }
                    if channels.is_empty() {
                        metrics::counter!(m::UNROUTED, "topic" => ev.topic.clone()).increment(1);
                        tracing::debug!(event_id = %ev.id, topic = %ev.topic, "event resolved to no channel");
                        continue;
                    }
                    if traced {
                        if let Some(sc) = producer_context(msg) {
                            parents.insert(ev.id.clone(), sc);
                        }
                    }
                    resolved.push(Resolved {
                        msg_index: i,
                        event: ev,
                        channels,
                    });
                }
            }
        }

        // Channel ids for every key of the batch.
        let mut keys: Vec<String> = resolved
            .iter()
            .flat_map(|r| &r.channels)
            .map(|c| c.key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        let stage = if carry.is_some() {
            Stage::Reader
        } else {
            Stage::Writer
        };
        let ids = self
            .retry(
                "resolve channel ids",
                stage,
                m::PG_ERRORS,
                carry,
                cancel,
                || self.log.channel_ids(&keys),
            )
            .await?;
        let id_of: HashMap<&str, i64> = keys.iter().map(String::as_str).zip(ids).collect();

        let now = chrono::Utc::now();
        let mut new_events: Vec<NewEvent> = Vec::new();
        let mut msg_of_event: HashMap<String, usize> = HashMap::new();
        let mut ephemeral_only: Vec<LogEvent> = Vec::new();
        let mut ephemeral_extra: HashMap<String, Vec<Entry>> = HashMap::new();
        for r in resolved {
            let ev = r.event;
            let draft = Draft {
                created_at_ms: ev.created_at_ms.unwrap_or_else(|| now.timestamp_millis()),
                event_id: ev.id,
                topic: ev.topic,
                tenant: ev.tenant,
                user_id: ev.user_id,
                payload: ev.payload,
                content_type: ev.content_type,
            };
            let channels = r
                .channels
                .iter()
                .filter_map(|c| id_of.get(c.key.as_str()).map(|&id| (c, id)));
            match route(draft, channels, now, &self.cfg.store) {
                Route::Ephemeral(live) => {
                    metrics::counter!(m::EPHEMERAL, "topic" => live.topic.clone()).increment(1);
                    ephemeral_only.push(live);
                }
                Route::Logged { event, ephemeral } => {
                    if !ephemeral.is_empty() {
                        ephemeral_extra.insert(event.event_id.clone(), ephemeral);
                    }
                    msg_of_event
                        .entry(event.event_id.clone())
                        .or_insert(r.msg_index);
                    new_events.push(event);
                }
            }
        }

        Ok(Prepared {
            batch,
            rejected,
            new_events,
            msg_of_event,
            ephemeral_only,
            ephemeral_extra,
            started,
            received_at_ms,
            parents,
        })
    }

    /// Stage two: append, DLQ, then store the offsets. Returns what to
    /// publish on Redis (committed events and ephemeral ones): the live feed
    /// is an accelerator, so offsets need not wait for it.
    async fn commit(
        &self,
        p: Prepared,
        cancel: &CancellationToken,
    ) -> Result<Committed, Unfinished> {
        let Prepared {
            batch,
            mut rejected,
            new_events,
            msg_of_event,
            ephemeral_only,
            mut ephemeral_extra,
            started,
            received_at_ms,
            parents,
        } = p;
        let span = tracing::info_span!("bridge.batch", records = batch.len());
        for sc in parents.values().take(MAX_BATCH_LINKS) {
            span.add_link(sc.clone());
        }
        // Groups with disjoint channel sets are appended concurrently, each
        // in its own transaction and retried on its own: a channel's events
        // are all in one group, in batch order, so its sequences are those
        // a single transaction would assign.
        let groups = shard(&new_events, self.cfg.append_writers);
        let shards: Vec<Vec<NewEvent>> = if groups.len() <= 1 {
            vec![new_events]
        } else {
            let mut slots: Vec<Option<NewEvent>> = new_events.into_iter().map(Some).collect();
            groups
                .iter()
                .map(|g| g.iter().filter_map(|&i| slots[i].take()).collect())
                .collect()
        };
        metrics::histogram!(m::APPEND_GROUPS).record(shards.len() as f64);
        let batch_span = &span;
        let appends = shards.iter().map(|events| {
            self.retry(
                "append to the cursor log",
                Stage::Writer,
                m::PG_ERRORS,
                None,
                cancel,
                move || {
                    async move {
                        match append_resilient(&self.log, events).await {
                            Err(LogError::UnknownChannel(id)) => Ok(Err(id)),
                            r => r.map(Ok),
                        }
                    }
                    .instrument(tracing::info_span!(
                        parent: batch_span,
                        "cursorlog.append",
                        events = events.len()
                    ))
                },
            )
        });
        let mut outcome = switchyard_cursorlog::AppendOutcome::default();
        let mut poisoned = Vec::new();
        let mut stale = false;
        for r in futures::future::join_all(appends).await {
            match r? {
                Ok((o, p)) => {
                    outcome.appended.extend(o.appended);
                    outcome.duplicates.extend(o.duplicates);
                    poisoned.extend(p);
                }
                // Groups that did commit are found as duplicates when the
                // batch is appended again.
                Err(_) => stale = true,
            }
        }
        if stale {
            return Err(Unfinished::StaleChannels(batch));
        }
        // Back into batch order (each group's events already are).
        outcome
            .appended
            .sort_by_key(|e| msg_of_event.get(&e.event_id).copied());
        let batch = &batch[..];
        for (event_id, why) in poisoned {
            if let Some(&i) = msg_of_event.get(&event_id) {
                rejected.push((i, Rejection::new("storage_rejected", why)));
            }
        }
        // Records that failed validation (or storage) go to the DLQ before any
        // offset covering them is stored.
        if !rejected.is_empty() {
            for (i, why) in &rejected {
                let msg = &batch[*i];
                tracing::warn!(
                    reason = why.reason,
                    detail = %why.detail,
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "event rejected to the DLQ"
                );
            }
            self.retry(
                "write to the DLQ",
                Stage::Writer,
                m::DLQ_ERRORS,
                None,
                cancel,
                || {
                    self.send_dlq(batch, &rejected)
                        .instrument(tracing::info_span!(
                            parent: &span,
                            "dlq.write",
                            records = rejected.len()
                        ))
                },
            )
            .await?;
            m::dlq_written(rejected.iter().map(|(_, why)| why.reason));
        }

        let commit_at = chrono::Utc::now().timestamp_millis();
        let mut live = outcome.appended;
        for ev in &mut live {
            metrics::counter!(m::APPENDED, "topic" => ev.topic.clone()).increment(1);
            let lag = (commit_at - ev.created_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(m::EVENT_LAG).record(lag);
            if let Some(extra) = ephemeral_extra.remove(&ev.event_id) {
                ev.entries.extend(extra);
            }
            ev.live.committed_at_ms = commit_at;
            m::stage("commit", received_at_ms, commit_at);
        }
        metrics::counter!(m::DUPLICATE).increment(outcome.duplicates.len() as u64);
        live.extend(ephemeral_only);
        let events = stamp(&mut live, &span, &parents, received_at_ms);
        self.store_offsets(batch);
        metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        tracing::debug!(
            records = batch.len(),
            appended = live.len(),
            dlq = rejected.len(),
            "batch done"
        );
        Ok(Committed { live, span, events })
    }

    /// Retries `op` with jittered backoff until it succeeds, holding
    /// consumption paused (as `stage`) meanwhile and counting each failure
    /// in `errors`. The reader passes its `carry` to park anything still
    /// fetched; the writer passes `None` and the reader keeps polling.
    async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        stage: Stage,
        errors: &'static str,
        mut carry: Option<&mut Carry>,
        cancel: &CancellationToken,
        mut op: F,
    ) -> Result<T, Cancelled>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match op().await {
                Ok(v) => {
                    // Also clears a mark the writer set for stale channels.
                    self.pause.recover(&self.consumer, stage);
                    return Ok(v);
                }
                Err(e) => {
                    metrics::counter!(errors).increment(1);
                    self.pause.stall(&self.consumer, stage);
                    let delay = backoff.next_delay();
                    tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "failed; consumption paused");
                    let until = tokio::time::Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(Cancelled),
                            _ = tokio::time::sleep_until(until) => break,
                            r = self.consumer.recv(), if carry.is_some() => {
                                if let (Ok(msg), Some(c)) = (r, carry.as_deref_mut()) {
                                    self.park(c, msg.detach());
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    async fn send_dlq(
        &self,
        batch: &[OwnedMessage],
        rejected: &[(usize, Rejection)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let sends = rejected
            .iter()
            .map(|(i, why)| self.send_dlq_record(&batch[*i], why));
        for r in futures::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    /// Sends one DLQ record: a copy of `msg`, or its metadata alone when the
    /// copy is too large to send (retrying a too-large record never helps).
    async fn send_dlq_record(
        &self,
        msg: &OwnedMessage,
        why: &Rejection,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let timeout = Duration::from_secs(10);
        let topic = &self.cfg.dlq_topic;
        if dlq::first_form(msg, self.cfg.dlq_max_bytes) == dlq::Form::Full {
            match self
                .dlq
                .send(dlq::record(topic, msg, why, dlq::Form::Full), timeout)
                .await
            {
                Ok(_) => return Ok(()),
                Err((e, _)) if !dlq::is_too_large(&e) => return Err(e),
                Err((e, _)) => tracing::warn!(error = %e, "the DLQ refused the copy as too large"),
            }
        }
        tracing::warn!(
            bytes = dlq::original_bytes(msg),
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            "record too large for the DLQ; sending its metadata only"
        );
        metrics::counter!(m::DLQ_PAYLOAD_OMITTED).increment(1);
        self.dlq
            .send(
                dlq::record(topic, msg, why, dlq::Form::MetadataOnly),
                timeout,
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for msg in batch {
            let e = next
                .entry((msg.topic().to_owned(), msg.partition()))
                .or_insert(0);
            *e = (*e).max(msg.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, topic, partition, "cannot build offset list");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // Typically a partition revoked mid-batch: its new owner re-reads
            // these records and the log's idempotency absorbs them.
            tracing::warn!(error = %e, "storing offsets failed");
        }
    }
}

/// The producer's trace context in `msg`'s `traceparent` / `tracestate`
/// headers; `None` when absent or malformed (the batch span is then the
/// event's root).
fn producer_context(msg: &OwnedMessage) -> Option<SpanContext> {
    let headers = msg.headers()?;
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .filter(|h| {
            h.key.eq_ignore_ascii_case("traceparent") || h.key.eq_ignore_ascii_case("tracestate")
        })
        .filter_map(|h| Some((h.key, h.value?)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    tracecontext::extract(&pairs)
}

/// Stamps the live path's times and trace context on `live`: an event whose
/// record carried a producer context gets a `bridge.event` span, a child of
/// that context linked to the batch span, and carries it on; the others
/// carry the batch span. Returns the event spans (they end after publish).
fn stamp(
    live: &mut [LogEvent],
    batch: &tracing::Span,
    parents: &HashMap<String, SpanContext>,
    received_at_ms: i64,
) -> Vec<opentelemetry::global::BoxedSpan> {
    for ev in live.iter_mut() {
        ev.live.received_at_ms = received_at_ms;
    }
    if !tracecontext::enabled() {
        return Vec::new();
    }
    let batch_cx = batch.context();
    let batch_sc = batch_cx.span().span_context().clone();
    let batch_tp = tracecontext::traceparent(&batch_sc);
    let tracer = tracecontext::tracer();
    let mut spans = Vec::new();
    for ev in live.iter_mut() {
        let Some(parent) = parents.get(&ev.event_id) else {
            ev.live.traceparent.clone_from(&batch_tp);
            continue;
        };
        let mut builder = tracer
            .span_builder("bridge.event")
            .with_kind(SpanKind::Consumer)
            .with_attributes(vec![
                KeyValue::new("switchyard.event_id", ev.event_id.clone()),
                KeyValue::new("switchyard.topic", ev.topic.clone()),
            ]);
        if batch_sc.is_valid() {
            builder = builder.with_links(vec![opentelemetry::trace::Link::with_context(
                batch_sc.clone(),
            )]);
        }
        let span =
            builder.start_with_context(&tracer, &tracecontext::remote_parent(parent.clone()));
        ev.live.traceparent = tracecontext::traceparent(span.span_context());
        spans.push(span);
    }
    spans
}

fn content_type_header(msg: &OwnedMessage) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("content-type"))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

type Poisoned = Vec<(String, String)>;
type AppendFuture<'a> = std::pin::Pin<
    Box<
        dyn Future<Output = Result<(switchyard_cursorlog::AppendOutcome, Poisoned), LogError>>
            + Send
            + 'a,
    >,
>;

/// Appends `events`; when PostgreSQL rejects the batch's *data* (see
/// [`LogError::rejects_data`]), splits it to isolate the offending events
/// (returned as poisoned, for the DLQ) and appends the rest in order. Any
/// other error is returned for the caller to retry: a read-only database
/// or a missing privilege must never send events to the DLQ.
fn append_resilient<'a>(log: &'a CursorLog, events: &'a [NewEvent]) -> AppendFuture<'a> {
    Box::pin(async move {
        match m::timed(m::APPEND_SECONDS, log.append_batch(events)).await {
            Ok(o) => Ok((o, Vec::new())),
            Err(e) if !e.rejects_data() => Err(e),
            Err(e) if events.len() == 1 => {
                tracing::error!(error = %e, event_id = %events[0].event_id, "PostgreSQL rejected the event");
                Ok((
                    Default::default(),
                    vec![(events[0].event_id.clone(), e.to_string())],
                ))
            }
            Err(_) => {
                let (first, second) = events.split_at(events.len() / 2);
                let (mut a, mut pa) = append_resilient(log, first).await?;
                let (b, pb) = append_resilient(log, second).await?;
                a.appended.extend(b.appended);
                a.duplicates.extend(b.duplicates);
                pa.extend(pb);
                Ok((a, pa))
            }
        }
    })
}
