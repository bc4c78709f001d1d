//! Guest kernel crashes: what counts as one, how the VMM tells a panic from an orderly
//! reboot, what it does afterwards, and how a crash is raised on demand.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::devices::bus::lock;

/// Who told the VMM that the kernel panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PanicSource {
    /// The guest's pvpanic driver wrote `PVPANIC_PANICKED` to the pvpanic port.
    #[serde(rename = "pvpanic")]
    Pvpanic,
    /// The VMM read the dead kernel's `panic_cpu` (polled, or on the reset that followed):
    /// the fallback for kernels without a pvpanic driver.
    #[serde(rename = "panic_cpu")]
    PanicCpu,
}

impl PanicSource {
    /// The name in events.
    pub fn name(self) -> &'static str {
        match self {
            PanicSource::Pvpanic => "pvpanic",
            PanicSource::PanicCpu => "panic_cpu",
        }
    }
}

/// Why the VMM decided the guest kernel died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum CrashCause {
    /// The kernel panicked: it said so through pvpanic, or `panic_cpu` was seen set (while
    /// it ran on, or when it reset the machine).
    Panic {
        /// The panic line from the console, when it was seen.
        message: Option<String>,
        /// Who saw it (also the event's `source`, see [`CrashCause::source`]).
        #[serde(skip)]
        source: PanicSource,
    },
    /// A triple fault (KVM shutdown exit).
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u8,
    },
    /// KVM could not emulate an instruction, or could not enter the guest.
    EmulationFailure {
        /// RIP, instruction bytes, symbol.
        description: String,
    },
    /// No agent heartbeat for too long while running.
    Hang {
        /// Seconds of silence.
        seconds: u64,
    },
}

impl CrashCause {
    /// What detected the crash, for the `source` of `crash-detected` and of the crash
    /// records in `status`: `pvpanic` or `panic_cpu` for a panic, else `triple-fault`,
    /// `emulation-failure` or `hang`.
    pub fn source(&self) -> &'static str {
        match self {
            CrashCause::Panic { source, .. } => source.name(),
            CrashCause::TripleFault { .. } => "triple-fault",
            CrashCause::EmulationFailure { .. } => "emulation-failure",
            CrashCause::Hang { .. } => "hang",
        }
    }

    /// One line for logs.
    pub fn describe(&self) -> String {
        match self {
            CrashCause::Panic {
                message: Some(m), ..
            } => format!("kernel panic: {m}"),
            CrashCause::Panic { message: None, .. } => "kernel panic".into(),
            CrashCause::TripleFault { vcpu } => format!("triple fault on vCPU {vcpu}"),
            CrashCause::EmulationFailure { description } => description.clone(),
            CrashCause::Hang { seconds } => format!("hang: no agent heartbeat for {seconds} s"),
        }
    }
}

/// What to do once a crash is detected and captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnCrash {
    /// Start the crash kernel from its warm standby (a snapshot of a freshly booted guest
    /// of the same shape) in place of the dead one; the old memory is kept until the
    /// recovery is done, then given back.
    #[default]
    Microreboot,
    /// Freeze the guest and keep the VMM up (inspect, snapshot, stop).
    Pause,
    /// End the VMM with exit code 4.
    Exit,
}

/// The kernel's `panic_cpu` holds this while no CPU has panicked.
pub const PANIC_CPU_INVALID: u32 = u32::MAX;

/// The last bytes the guest wrote to its console, kept to quote a panic message.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

const TAIL_BYTES: usize = 8192;

impl ConsoleTail {
    /// Appends bytes, keeping the last [`TAIL_BYTES`].
    pub fn push(&self, bytes: &[u8]) {
        let mut t = lock(&self.0);
        t.extend(bytes);
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
    }

    /// The text kept so far.
    pub fn text(&self) -> String {
        let t = lock(&self.0);
        let (a, b) = t.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// The last `Kernel panic - not syncing: ...` line, if any.
    pub fn panic_line(&self) -> Option<String> {
        let text = self.text();
        text.lines()
            .rev()
            .find_map(|l| l.split_once("Kernel panic - not syncing: ").map(|(_, m)| m))
            .map(|m| m.trim().to_string())
    }
}

/// A console writer that also keeps the tail.
pub struct TeeConsole {
    /// Where the console goes.
    pub out: Box<dyn Write + Send>,
    /// The tail.
    pub tail: ConsoleTail,
}

impl Write for TeeConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.push(buf);
        // A console that cannot be written (closed terminal) must not stop the guest.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// Where `ctl crash` puts its panic message: the end of the zero page, which Linux keeps
/// reserved (the first MiB is never handed to the page allocator).
pub const CRASH_MESSAGE_GPA: u64 = 0x7f00;
/// The message.
pub const CRASH_MESSAGE: &[u8] = b"owvmm: crash requested through the control socket\0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_and_finds_the_panic_line() {
        let t = ConsoleTail::default();
        t.push(&vec![b'x'; TAIL_BYTES]);
        t.push(b"\n[  5.1] Kernel panic - not syncing: sysrq triggered crash\n[  5.2] more\n");
        assert_eq!(t.text().len(), TAIL_BYTES);
        assert_eq!(t.panic_line().as_deref(), Some("sysrq triggered crash"));
        let empty = ConsoleTail::default();
        assert_eq!(empty.panic_line(), None);
    }

    #[test]
    fn causes_describe_themselves() {
        let c = CrashCause::Hang { seconds: 30 };
        assert!(c.describe().contains("30 s"));
        let v = serde_json::to_value(CrashCause::TripleFault { vcpu: 1 }).expect("json");
        assert_eq!(v["cause"], "triple-fault");
        assert_eq!(v["vcpu"], 1);
    }

    #[test]
    fn every_cause_names_its_source() {
        let p = |source| CrashCause::Panic {
            message: None,
            source,
        };
        assert_eq!(p(PanicSource::Pvpanic).source(), "pvpanic");
        assert_eq!(p(PanicSource::PanicCpu).source(), "panic_cpu");
        assert_eq!(CrashCause::TripleFault { vcpu: 0 }.source(), "triple-fault");
        let e = CrashCause::EmulationFailure {
            description: String::new(),
        };
        assert_eq!(e.source(), "emulation-failure");
        assert_eq!(CrashCause::Hang { seconds: 1 }.source(), "hang");
        // The serialized cause does not repeat the source (crash() adds it once).
        let v = serde_json::to_value(p(PanicSource::Pvpanic)).expect("json");
        assert_eq!(v["cause"], "panic");
        assert!(v.get("source").is_none());
        assert_eq!(
            serde_json::to_value(PanicSource::PanicCpu).expect("json"),
            "panic_cpu"
        );
    }
}
