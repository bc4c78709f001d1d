//! A process's credentials put back (`cred` records): ids, supplementary groups,
//! capability sets and securebits, on every thread, by system calls injected into the
//! stub once it is otherwise rebuilt. The stub starts as the agent's copy (root, every
//! capability), so the privileged steps go first: the bounding set, the groups and group
//! ids, then the user ids with `SECBIT_KEEP_CAPS` held so that `capset` can give the
//! process exactly its old sets; ambient capabilities last (they need the permitted and
//! inheritable ones). Raw `setresuid` changes only the calling thread, hence each thread.

use super::manifest::Creds;
use super::tracer::{Injector, Regs, Tid};
use super::Error;

/// `PR_SET_DUMPABLE`.
const PR_SET_DUMPABLE: u64 = 4;
/// `PR_SET_KEEPCAPS`.
const PR_SET_KEEPCAPS: u64 = 8;
/// `PR_CAPBSET_DROP`.
const PR_CAPBSET_DROP: u64 = 24;
/// `PR_SET_SECUREBITS`.
const PR_SET_SECUREBITS: u64 = 28;
/// `PR_CAP_AMBIENT`, `PR_CAP_AMBIENT_RAISE`.
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
/// `SECBIT_KEEP_CAPS` and its lock.
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const SECBIT_KEEP_CAPS_LOCKED: u32 = 1 << 5;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;
/// Capability numbers looked at (`CAP_LAST_CAP` is 40 in 6.1; 63 leaves room).
const MAX_CAP: u64 = 63;

/// The credentials of `tid` as its `/proc` status shows them (ids, groups, the five
/// capability sets; securebits 0 and dumpable 1, which status does not show: the stub
/// is the agent's copy and has those).
pub fn current(tid: i32) -> Option<Creds> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<Creds> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let ids = |key: &str| -> Option<[u32; 4]> {
        let v: Vec<u32> = field(key)?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        v.try_into().ok()
    };
    let cap = |key: &str| u64::from_str_radix(field(key)?, 16).ok();
    Some(Creds {
        uids: ids("Uid:")?,
        gids: ids("Gid:")?,
        securebits: 0,
        caps: [
            cap("CapInh:")?,
            cap("CapPrm:")?,
            cap("CapEff:")?,
            cap("CapBnd:")?,
            cap("CapAmb:")?,
        ],
        dumpable: 1,
        groups: field("Groups:")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?,
    })
}

/// A system call to make: its number, arguments, and what it is (for errors).
pub type Step = (i64, [u64; 6], &'static str);

/// The system calls that turn `have` into `want`, in order, and the bytes they read
/// (the groups, then the capability structs), which must be at `data` when they run.
pub fn steps(want: &Creds, have: &Creds, data: u64) -> (Vec<Step>, Vec<u8>) {
    let mut calls: Vec<Step> = Vec::new();
    let mut prctl = |args: [u64; 5], what| {
        calls.push((
            libc::SYS_prctl,
            [args[0], args[1], args[2], args[3], args[4], 0],
            what,
        ));
    };
    let bset = want.caps[3];
    for cap in (0..=MAX_CAP).filter(|c| have.caps[3] & !bset & (1 << c) != 0) {
        prctl([PR_CAPBSET_DROP, cap, 0, 0, 0], "prctl(PR_CAPBSET_DROP)");
    }
    // Keep the permitted set through the change of user ids, unless the old process had
    // that locked off.
    let keep =
        want.securebits & SECBIT_KEEP_CAPS_LOCKED == 0 || want.securebits & SECBIT_KEEP_CAPS != 0;
    let bits = if keep {
        want.securebits | SECBIT_KEEP_CAPS
    } else {
        want.securebits
    };
    prctl(
        [PR_SET_SECUREBITS, u64::from(bits), 0, 0, 0],
        "prctl(PR_SET_SECUREBITS)",
    );
    let mut bytes = Vec::with_capacity(want.groups.len() * 4 + 32);
    for g in &want.groups {
        bytes.extend_from_slice(&g.to_ne_bytes());
    }
    while bytes.len() % 8 != 0 {
        bytes.push(0);
    }
    let caps_at = data + bytes.len() as u64;
    // struct __user_cap_header_struct, then two __user_cap_data_struct (low, high words):
    // effective, permitted, inheritable.
    bytes.extend_from_slice(&CAP_V3.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    for half in [0, 32] {
        for set in [want.caps[2], want.caps[1], want.caps[0]] {
            bytes.extend_from_slice(
                &u32::try_from((set >> half) & 0xffff_ffff)
                    .unwrap_or(0)
                    .to_ne_bytes(),
            );
        }
    }
    let [rg, eg, sg, fg] = want.gids.map(u64::from);
    let [ru, eu, su, fu] = want.uids.map(u64::from);
    calls.extend([
        (
            libc::SYS_setgroups,
            [want.groups.len() as u64, data, 0, 0, 0, 0],
            "setgroups",
        ),
        (libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0], "setresgid"),
        (libc::SYS_setfsgid, [fg, 0, 0, 0, 0, 0], "setfsgid"),
        (libc::SYS_setresuid, [ru, eu, su, 0, 0, 0], "setresuid"),
        (libc::SYS_setfsuid, [fu, 0, 0, 0, 0, 0], "setfsuid"),
        (
            libc::SYS_capset,
            [caps_at, caps_at + 8, 0, 0, 0, 0],
            "capset",
        ),
    ]);
    for cap in (0..=MAX_CAP).filter(|c| want.caps[4] & (1 << c) != 0) {
        calls.push((
            libc::SYS_prctl,
            [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
            "prctl(PR_CAP_AMBIENT_RAISE)",
        ));
    }
    if keep && want.securebits & SECBIT_KEEP_CAPS == 0 {
        calls.push((
            libc::SYS_prctl,
            [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
            "prctl(PR_SET_KEEPCAPS)",
        ));
    }
    (calls, bytes)
}

/// Puts `want` on thread `tid` (registers `base`), which has `have`; `data` is scratch
/// memory for the groups and the capability structs.
pub fn apply(
    inj: &Injector,
    tid: Tid,
    base: &Regs,
    data: u64,
    want: &Creds,
    have: &Creds,
) -> Result<(), Error> {
    let (calls, bytes) = steps(want, have, data);
    inj.write(data, &bytes)?;
    for (nr, args, what) in calls {
        inj.call(tid, base, nr, args, what)?;
    }
    Ok(())
}

/// The mm's dumpable flag (process-wide), which a change of ids reset; `prctl` can set 0
/// and 1 only (2 comes from the `suid_dumpable` sysctl, and stays as the kernel made it).
pub fn set_dumpable(inj: &Injector, tid: Tid, base: &Regs, want: &Creds) -> Result<(), Error> {
    if want.dumpable > 1 {
        return Ok(());
    }
    inj.call(
        tid,
        base,
        libc::SYS_prctl,
        [PR_SET_DUMPABLE, u64::from(want.dumpable), 0, 0, 0, 0],
        "prctl(PR_SET_DUMPABLE)",
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_drop_privileges_in_an_order_the_kernel_allows() {
        let root = Creds {
            caps: [0, 0x1ff_ffff_ffff, 0x1ff_ffff_ffff, 0x1ff_ffff_ffff, 0],
            dumpable: 1,
            ..Creds::default()
        };
        let want = Creds {
            uids: [1000, 1001, 1002, 1001],
            gids: [100; 4],
            caps: [0x400, 0x420, 0x420, 0x1ff_fffe_ffff, 0x400],
            groups: vec![5, 27],
            ..root.clone()
        };
        let (calls, bytes) = steps(&want, &root, 0x1000);
        let names: Vec<&str> = calls.iter().map(|c| c.2).collect();
        assert_eq!(
            names,
            [
                "prctl(PR_CAPBSET_DROP)",
                "prctl(PR_SET_SECUREBITS)",
                "setgroups",
                "setresgid",
                "setfsgid",
                "setresuid",
                "setfsuid",
                "capset",
                "prctl(PR_CAP_AMBIENT_RAISE)",
                "prctl(PR_SET_KEEPCAPS)"
            ]
        );
        assert_eq!(calls[0].1[1], 16, "CAP_SYS_MODULE leaves the bounding set");
        assert_eq!(calls[1].1[1], u64::from(SECBIT_KEEP_CAPS));
        assert_eq!(calls[2].1[..2], [2, 0x1000]);
        assert_eq!(
            calls[7].1[..2],
            [0x1008, 0x1010],
            "capset after the 8 bytes of groups"
        );
        assert_eq!(&bytes[..8], &[5, 0, 0, 0, 27, 0, 0, 0]);
        assert_eq!(&bytes[16..28], &[0x20, 4, 0, 0, 0x20, 4, 0, 0, 0, 4, 0, 0]);
        assert_eq!(bytes.len(), 8 + 8 + 24);
    }

    #[test]
    fn reads_the_credentials_in_a_status_file() {
        let s = "Name:\tsh\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nGroups:\t5 27 \n\
                 CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                 CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000400\n";
        let c = parse_status(s).expect("parsed");
        assert_eq!(c.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(c.gids, [5, 6, 7, 8]);
        assert_eq!(c.groups, [5, 27]);
        assert_eq!(
            c.caps,
            [0, 0x1ff_ffff_ffff, 0x1ff_ffff_ffff, 0x1ff_ffff_ffff, 0x400]
        );
        assert!(parse_status("Uid:\t1 2 3\n").is_none());
        let none = s.replace("Groups:\t5 27 ", "Groups:");
        assert_eq!(parse_status(&none).map(|c| c.groups), Some(vec![]));
    }
}
