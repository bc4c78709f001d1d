//! The VMM's event stream: every subscriber (an `events` connection on the control socket)
//! gets each event as one JSON line.
//!
//! Events come from the event loop and from vCPU threads (the agent channel's lines), so
//! [`EventBus::publish`] never blocks: each event is serialised once and offered to every
//! subscriber's bounded queue ([`QUEUE_EVENTS`] events, [`QUEUE_BYTES`] bytes). A
//! subscriber whose queue is full is not keeping up (typically a client that stopped
//! reading): it is dropped from the bus, its connection gets one last
//! [`dropped`](Subscription::recv_timeout) line saying why, and the remaining subscribers
//! get a `subscriber-dropped` event. Host memory held for subscribers is thus bounded
//! whatever the guest writes and however slowly clients read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::devices::bus::lock;

/// Events a subscriber may have waiting before it is dropped.
pub const QUEUE_EVENTS: usize = 1024;
/// Bytes of event lines a subscriber may have waiting before it is dropped.
pub const QUEUE_BYTES: usize = 1 << 20;

/// One event, serialised as a JSON object without its line end (shared by all subscribers).
pub type EventLine = Arc<str>;

/// Fan-out of events to subscribers.
#[derive(Clone)]
pub struct EventBus {
    subs: Arc<Mutex<Vec<Sub>>>,
    start: Instant,
    limits: Limits,
}

/// How much a subscriber may have waiting.
#[derive(Debug, Clone, Copy)]
struct Limits {
    events: usize,
    bytes: usize,
}

/// The bus's end of a subscription.
struct Sub {
    tx: SyncSender<EventLine>,
    shared: Arc<Shared>,
}

/// What both ends of a subscription see.
#[derive(Default)]
struct Shared {
    /// Bytes of the lines sent but not yet received.
    queued_bytes: AtomicUsize,
    /// Set when the bus dropped the subscriber: its last line.
    dropped: OnceLock<EventLine>,
    /// The subscriber's end is gone.
    closed: AtomicBool,
}

/// What happened to an event offered to a subscriber.
enum Offer {
    Queued,
    /// The queue is full: why, for the `dropped` line.
    Full(String),
    /// The subscriber went away.
    Gone,
}

impl Sub {
    fn offer(&self, line: &EventLine, limits: Limits) -> Offer {
        let len = line.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if before.saturating_add(len) > limits.bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return Offer::Full(format!("queue of {} bytes full", limits.bytes));
        }
        match self.tx.try_send(line.clone()) {
            Ok(()) => Offer::Queued,
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => {
                        Offer::Full(format!("queue of {} events full", limits.events))
                    }
                    TrySendError::Disconnected(_) => Offer::Gone,
                }
            }
        }
    }
}

/// How a [`Subscription::recv_timeout`] came back without an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvEnd {
    /// Nothing arrived in time; the subscription goes on.
    Timeout,
    /// The bus dropped this subscriber because its queue was full. The line is the
    /// `dropped` event to send as the connection's last line.
    Dropped(EventLine),
    /// The bus is gone (the VMM is ending).
    Closed,
}

/// A subscriber's end: the events published since [`EventBus::subscribe`], in order.
pub struct Subscription {
    rx: Receiver<EventLine>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next event line, waiting at most `timeout`. After the bus dropped this
    /// subscriber, the events queued before that still come first, then
    /// [`RecvEnd::Dropped`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<EventLine, RecvEnd> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.shared
                    .queued_bytes
                    .fetch_sub(line.len(), Ordering::SeqCst);
                Ok(line)
            }
            Err(RecvTimeoutError::Timeout) => Err(RecvEnd::Timeout),
            Err(RecvTimeoutError::Disconnected) => match self.shared.dropped.get() {
                Some(line) => Err(RecvEnd::Dropped(line.clone())),
                None => Err(RecvEnd::Closed),
            },
        }
    }

    /// The next event line if one is waiting.
    pub fn try_recv(&self) -> Result<EventLine, RecvEnd> {
        self.recv_timeout(Duration::ZERO)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

impl EventBus {
    /// A bus whose event times count from `start`.
    pub fn new(start: Instant) -> Self {
        Self::with_limits(start, QUEUE_EVENTS, QUEUE_BYTES)
    }

    /// A bus whose subscribers may have at most `events` events or `bytes` bytes waiting.
    fn with_limits(start: Instant, events: usize, bytes: usize) -> Self {
        EventBus {
            subs: Arc::default(),
            start,
            limits: Limits {
                events: events.max(1),
                bytes,
            },
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = sync_channel(self.limits.events);
        let shared = Arc::new(Shared::default());
        let mut subs = lock(&self.subs);
        subs.retain(|s| !s.shared.closed.load(Ordering::SeqCst));
        subs.push(Sub {
            tx,
            shared: shared.clone(),
        });
        Subscription { rx, shared }
    }

    /// How many subscribers there are (whose end is still there).
    pub fn subscribers(&self) -> usize {
        let mut subs = lock(&self.subs);
        subs.retain(|s| !s.shared.closed.load(Ordering::SeqCst));
        subs.len()
    }

    fn t_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `event` with `fields` (a JSON object), stamped with the VMM's uptime, as a line.
    fn line(&self, event: &str, fields: Value) -> EventLine {
        let mut v = json!({ "event": event, "t_ms": self.t_ms() });
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
            obj.extend(extra);
        }
        v.to_string().into()
    }

    /// Publishes `event` with `fields` (a JSON object), stamped with the VMM's uptime.
    /// Never blocks: a subscriber whose queue is full is dropped (see the module doc).
    pub fn publish(&self, event: &str, fields: Value) {
        let mut line = self.line(event, fields);
        let mut subs = lock(&self.subs);
        // Dropping subscribers is announced to the others, which may drop more of them:
        // at most one round per subscriber.
        loop {
            let mut dropped = 0usize;
            let mut reason = String::new();
            subs.retain(|s| match s.offer(&line, self.limits) {
                Offer::Queued => true,
                Offer::Gone => false,
                Offer::Full(why) => {
                    let why = format!("events not read fast enough: {why}");
                    let _ = s.shared.dropped.set(self.line(
                        "dropped",
                        json!({
                            "reason": why,
                            "queue_events": self.limits.events,
                            "queue_bytes": self.limits.bytes,
                        }),
                    ));
                    dropped += 1;
                    reason = why;
                    false
                }
            });
            if dropped == 0 || subs.is_empty() {
                return;
            }
            line = self.line(
                "subscriber-dropped",
                json!({ "dropped": dropped, "reason": reason, "subscribers": subs.len() }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &EventLine) -> Value {
        serde_json::from_str(line).expect("event JSON")
    }

    fn next(s: &Subscription) -> Value {
        parse(&s.try_recv().expect("event"))
    }

    #[test]
    fn every_subscriber_gets_events_and_dead_ones_are_dropped() {
        let bus = EventBus::new(Instant::now());
        let a = bus.subscribe();
        let b = bus.subscribe();
        drop(b);
        bus.publish("paused", json!({"why": "test"}));
        let e = next(&a);
        assert_eq!(e["event"], "paused");
        assert_eq!(e["why"], "test");
        assert!(e["t_ms"].is_u64());
        assert_eq!(bus.subscribers(), 1);
        assert_eq!(a.try_recv(), Err(RecvEnd::Timeout));
    }

    /// Publishes `n` events on another thread and waits (bounded) until it has finished:
    /// `publish` must return whatever the subscribers do.
    fn publish_many(bus: &EventBus, n: usize, on_each: impl Fn(usize) + Send + 'static) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let b = bus.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                b.publish("heartbeat", json!({ "seq": i }));
                on_each(i);
            }
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("publish blocked");
    }

    #[test]
    fn a_deaf_subscriber_is_dropped_with_a_reason_and_the_others_go_on() {
        let bus = EventBus::new(Instant::now());
        let deaf = bus.subscribe();
        let reader = bus.subscribe();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        // The reader keeps up: it takes each event right after it was published.
        let n = QUEUE_EVENTS * 4;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(line) = reader.recv_timeout(Duration::from_secs(60)) {
                got.push(parse(&line));
                let _ = seen_tx.send(());
                if got.len() == n + 1 {
                    break;
                }
            }
            (got, reader)
        });
        publish_many(&bus, n, move |_| {
            let _ = seen_rx.recv_timeout(Duration::from_secs(60));
        });
        let (got, _reader) = reader.join().expect("reader");
        // Every heartbeat, and one notice that the deaf one was dropped.
        assert_eq!(got.len(), n + 1, "the reading subscriber lost events");
        let notice: Vec<_> = got
            .iter()
            .filter(|e| e["event"] == "subscriber-dropped")
            .collect();
        assert_eq!(notice.len(), 1, "{notice:?}");
        assert_eq!(notice[0]["dropped"], 1);
        assert_eq!(notice[0]["subscribers"], 1);
        let seqs: Vec<_> = got
            .iter()
            .filter(|e| e["event"] == "heartbeat")
            .map(|e| e["seq"].as_u64().unwrap_or(u64::MAX))
            .collect();
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());

        // The deaf one gets what its queue held, then the reason, and nothing more.
        for i in 0..QUEUE_EVENTS {
            let e = next(&deaf);
            assert_eq!(e["seq"], i, "{e}");
        }
        let Err(RecvEnd::Dropped(last)) = deaf.try_recv() else {
            panic!("the deaf subscriber was not dropped");
        };
        let last = parse(&last);
        assert_eq!(last["event"], "dropped");
        let reason = last["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(&format!("queue of {QUEUE_EVENTS} events full")),
            "{reason}"
        );
        assert_eq!(last["queue_events"], QUEUE_EVENTS);
        assert!(matches!(deaf.try_recv(), Err(RecvEnd::Dropped(_))));
        assert_eq!(bus.subscribers(), 1);
    }

    #[test]
    fn publish_never_blocks_with_only_deaf_subscribers() {
        let bus = EventBus::new(Instant::now());
        let subs: Vec<_> = (0..8).map(|_| bus.subscribe()).collect();
        publish_many(&bus, QUEUE_EVENTS * 10, |_| {});
        assert_eq!(bus.subscribers(), 0);
        for s in &subs {
            let mut n = 0;
            let end = loop {
                match s.try_recv() {
                    Ok(_) => n += 1,
                    Err(e) => break e,
                }
            };
            assert_eq!(n, QUEUE_EVENTS);
            assert!(matches!(end, RecvEnd::Dropped(_)), "{end:?}");
        }
    }

    #[test]
    fn the_byte_budget_bounds_big_events() {
        let bus = EventBus::with_limits(Instant::now(), 1000, 10_000);
        let s = bus.subscribe();
        let text = "x".repeat(3000);
        for _ in 0..4 {
            bus.publish("agent-error", json!({ "text": text }));
        }
        // Three fit in 10 000 bytes, the fourth did not.
        for _ in 0..3 {
            assert_eq!(next(&s)["event"], "agent-error");
        }
        let Err(RecvEnd::Dropped(last)) = s.try_recv() else {
            panic!("not dropped");
        };
        let last = parse(&last);
        assert!(
            last["reason"]
                .as_str()
                .unwrap_or("")
                .contains("queue of 10000 bytes full"),
            "{last}"
        );
    }

    #[test]
    fn a_subscriber_that_reads_is_never_dropped() {
        let bus = EventBus::with_limits(Instant::now(), 4, 1 << 20);
        let s = bus.subscribe();
        for round in 0..1000 {
            for _ in 0..4 {
                bus.publish("heartbeat", json!({ "seq": round }));
            }
            for _ in 0..4 {
                assert_eq!(next(&s)["seq"], round);
            }
        }
        assert_eq!(bus.subscribers(), 1);
        drop(bus);
        assert_eq!(s.try_recv(), Err(RecvEnd::Closed));
    }
}
