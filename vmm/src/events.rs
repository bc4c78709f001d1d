//! The VMM's event stream: every subscriber (an `events` connection on the control socket)
//! gets each event as one JSON object.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::devices::bus::lock;

/// Fan-out of events to subscribers.
#[derive(Clone)]
pub struct EventBus {
    subs: Arc<Mutex<Vec<Sender<Value>>>>,
    start: Instant,
}

impl EventBus {
    /// A bus whose event times count from `start`.
    pub fn new(start: Instant) -> Self {
        EventBus {
            subs: Arc::default(),
            start,
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> Receiver<Value> {
        let (tx, rx) = channel();
        lock(&self.subs).push(tx);
        rx
    }

    /// Publishes `event` with `fields` (a JSON object), stamped with the VMM's uptime.
    pub fn publish(&self, event: &str, fields: Value) {
        let mut v = json!({ "event": event, "t_ms": u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) });
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
            obj.extend(extra);
        }
        lock(&self.subs).retain(|s| s.send(v.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_events_and_dead_ones_are_dropped() {
        let bus = EventBus::new(Instant::now());
        let a = bus.subscribe();
        let b = bus.subscribe();
        drop(b);
        bus.publish("paused", json!({"why": "test"}));
        let e = a.try_recv().expect("event");
        assert_eq!(e["event"], "paused");
        assert_eq!(e["why"], "test");
        assert!(e["t_ms"].is_u64());
        assert_eq!(lock(&bus.subs).len(), 1);
    }
}
