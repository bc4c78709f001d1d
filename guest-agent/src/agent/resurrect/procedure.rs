//! Crash procedures, the agent's side (`docs/crash-procedures.md`): a process that
//! registered one (`ow_set_crash_procedure` of `sdk/include/owvmm.h`: a handler with
//! `SA_SIGINFO` for signal 63) gets, once it is rebuilt and before it goes on, a block
//! in a fresh mapping of its own listing what was lost, and signal 63 queued to its main
//! thread with the block's address. The SDK's handler calls the procedure, which decides.

use super::manifest::SigRec;

/// The signal of the crash procedure (`OW_SIGNAL`).
pub const SIGNAL: i32 = 63;
/// `SA_SIGINFO`.
const SA_SIGINFO: u64 = 4;
/// `OW_ABI_VERSION`.
const VERSION: u32 = 1;
/// Size of the block's header; the `struct ow_lost` array follows it.
const HEADER: usize = 32;
/// `sizeof(struct ow_lost)` on x86-64.
const LOST_SIZE: usize = 24;
/// `SI_QUEUE`.
const SI_QUEUE: i32 = -1;
/// Longest `kind` or `why` string written (the rest is cut).
const MAX_TEXT: usize = 200;

/// One thing not restored exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The descriptor, or -1.
    pub fd: i32,
    /// `tcp`, `udp`, `unix`, `socket`, `device`, `file`, ...
    pub kind: &'static str,
    pub why: String,
}

/// True when `sigs` show a registered crash procedure.
pub fn registered(sigs: &[SigRec]) -> bool {
    sigs.iter()
        .any(|s| s.signo == SIGNAL && s.handler > 1 && s.flags & SA_SIGINFO != 0)
}

/// The block for address `at` (page aligned): its bytes, padded to whole pages.
pub fn block(at: u64, lost: &[Lost]) -> Vec<u8> {
    let strings_at = HEADER + lost.len() * LOST_SIZE;
    let mut strings: Vec<u8> = Vec::new();
    let mut entries: Vec<u8> = Vec::with_capacity(lost.len() * LOST_SIZE);
    let put = |s: &str, strings: &mut Vec<u8>| -> u64 {
        let off = strings_at + strings.len();
        let cut = s.len().min(MAX_TEXT);
        let cut = (0..=cut)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        strings.extend(s.as_bytes()[..cut].iter().filter(|&&b| b != 0));
        strings.push(0);
        at + off as u64
    };
    for l in lost {
        entries.extend_from_slice(&l.fd.to_ne_bytes());
        entries.extend_from_slice(&[0; 4]);
        let kind = put(l.kind, &mut strings);
        let why = put(&l.why, &mut strings);
        entries.extend_from_slice(&kind.to_ne_bytes());
        entries.extend_from_slice(&why.to_ne_bytes());
    }
    let len = (strings_at + strings.len()).next_multiple_of(4096);
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(b"OWCRASH1");
    b.extend_from_slice(&VERSION.to_ne_bytes());
    b.extend_from_slice(&u32::try_from(lost.len()).unwrap_or(u32::MAX).to_ne_bytes());
    b.extend_from_slice(&(at + HEADER as u64).to_ne_bytes());
    b.extend_from_slice(&(len as u64).to_ne_bytes());
    b.extend_from_slice(&entries);
    b.extend_from_slice(&strings);
    b.resize(len, 0);
    b
}

/// Queues the crash signal with the block's address to the main thread of `pid`.
pub fn queue(pid: i32, at: u64) -> std::io::Result<()> {
    // The kernel's siginfo: signo, errno, code, then (_rt) pid, uid, sigval.
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&SIGNAL.to_ne_bytes());
    info[8..12].copy_from_slice(&SI_QUEUE.to_ne_bytes());
    info[16..20].copy_from_slice(&std::process::id().to_ne_bytes());
    info[24..32].copy_from_slice(&at.to_ne_bytes());
    // SAFETY: rt_tgsigqueueinfo reads 128 bytes of `info`, which lives across the call.
    let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, pid, SIGNAL, info.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a `reset:<type>:<what>` descriptor was, for the lost list.
pub fn reset_lost(fd: i32, what: &str) -> Lost {
    let kind = if what.contains("tcp") {
        "tcp"
    } else if what.contains("udp") {
        "udp"
    } else if what.starts_with("unix") {
        "unix"
    } else {
        "socket"
    };
    let what = if what.is_empty() { "a socket" } else { what };
    Lost {
        fd,
        kind,
        why: format!("connection reset: {what} did not come back"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    fn cstr(b: &[u8], base: u64, ptr: u64) -> String {
        let off = usize::try_from(ptr - base).expect("offset");
        let end = b[off..].iter().position(|&c| c == 0).expect("NUL") + off;
        String::from_utf8_lossy(&b[off..end]).into_owned()
    }

    #[test]
    fn the_block_is_laid_out_as_the_header_reads_it() {
        let at = 0x7f00_0000_0000;
        let lost = vec![
            reset_lost(4, "ipv4 tcp connection (state 1), port 6379"),
            Lost {
                fd: -1,
                kind: "device",
                why: "x".repeat(500),
            },
        ];
        let b = block(at, &lost);
        assert_eq!(b.len() % 4096, 0);
        assert_eq!(&b[0..8], b"OWCRASH1");
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().expect("4")), 1);
        assert_eq!(u32::from_ne_bytes(b[12..16].try_into().expect("4")), 2);
        assert_eq!(word(&b, 16), at + 32);
        assert_eq!(word(&b, 24), b.len() as u64);
        let e0 = 32;
        assert_eq!(i32::from_ne_bytes(b[e0..e0 + 4].try_into().expect("4")), 4);
        assert_eq!(cstr(&b, at, word(&b, e0 + 8)), "tcp");
        assert!(cstr(&b, at, word(&b, e0 + 16)).contains("port 6379"));
        let e1 = 32 + 24;
        assert_eq!(i32::from_ne_bytes(b[e1..e1 + 4].try_into().expect("4")), -1);
        assert_eq!(cstr(&b, at, word(&b, e1 + 8)), "device");
        assert_eq!(cstr(&b, at, word(&b, e1 + 16)).len(), MAX_TEXT);
    }

    #[test]
    fn registration_is_a_siginfo_handler_for_signal_63() {
        let sig = |signo, handler, flags| SigRec {
            signo,
            handler,
            flags,
            restorer: 0,
            mask: 0,
        };
        assert!(registered(&[sig(63, 0x40_1000, 0x1400_0004)]));
        assert!(!registered(&[sig(63, 0x40_1000, 0x1400_0000)]));
        assert!(!registered(&[sig(63, 1, 4)]));
        assert!(!registered(&[sig(62, 0x40_1000, 4)]));
        assert_eq!(reset_lost(3, "unix socket (type 1)").kind, "unix");
        assert_eq!(
            reset_lost(3, "").why,
            "connection reset: a socket did not come back"
        );
    }
}
