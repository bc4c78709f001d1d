//! The control socket's endpoint on the event loop: the server thread queues each
//! request and writes an eventfd; this subscriber takes the requests to the VMM, as
//! Firecracker's API server adapter does.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::Vmm;
use crate::api::server::ApiCall;
use crate::devices::bus::lock;

/// Hands the control socket's requests to the VMM.
pub(super) struct ApiAdapter {
    vmm: Arc<Mutex<Vmm>>,
    calls: Receiver<ApiCall>,
    evt: EventFd,
}

impl ApiAdapter {
    pub(super) fn new(vmm: Arc<Mutex<Vmm>>, calls: Receiver<ApiCall>, evt: EventFd) -> Self {
        ApiAdapter { vmm, calls, evt }
    }
}

impl MutEventSubscriber for ApiAdapter {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        let mut vmm = lock(&self.vmm);
        while let Ok(call) = self.calls.try_recv() {
            vmm.handle_api(call);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            eprintln!("owvmm: control socket not registered: {e}");
        }
    }
}
