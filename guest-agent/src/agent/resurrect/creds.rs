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
    let call = |nr: i64, args: [u64; 6], what: &str| inj.call(tid, base, nr, args, what);
    let bset = want.caps[3];
    for cap in (0..=MAX_CAP).filter(|c| have.caps[3] & !bset & (1 << c) != 0) {
        call(
            libc::SYS_prctl,
            [PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
            "prctl(PR_CAPBSET_DROP)",
        )?;
    }
    let mut groups = Vec::with_capacity(want.groups.len() * 4);
    for g in &want.groups {
        groups.extend_from_slice(&g.to_ne_bytes());
    }
    inj.write(data, &groups)?;
    call(
        libc::SYS_setgroups,
        [want.groups.len() as u64, data, 0, 0, 0, 0],
        "setgroups",
    )?;
    let [rg, eg, sg, fg] = want.gids.map(u64::from);
    call(libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0], "setresgid")?;
    call(libc::SYS_setfsgid, [fg, 0, 0, 0, 0, 0], "setfsgid")?;
    // Keep the permitted set through the change of user ids, unless the old process had
    // that locked off.
    let keep =
        want.securebits & SECBIT_KEEP_CAPS_LOCKED == 0 || want.securebits & SECBIT_KEEP_CAPS != 0;
    let bits = if keep {
        want.securebits | SECBIT_KEEP_CAPS
    } else {
        want.securebits
    };
    call(
        libc::SYS_prctl,
        [PR_SET_SECUREBITS, u64::from(bits), 0, 0, 0, 0],
        "prctl(PR_SET_SECUREBITS)",
    )?;
    let [ru, eu, su, fu] = want.uids.map(u64::from);
    call(libc::SYS_setresuid, [ru, eu, su, 0, 0, 0], "setresuid")?;
    call(libc::SYS_setfsuid, [fu, 0, 0, 0, 0, 0], "setfsuid")?;
    // struct __user_cap_header_struct, then two __user_cap_data_struct (low, high words):
    // effective, permitted, inheritable.
    let mut caps = Vec::with_capacity(32);
    caps.extend_from_slice(&CAP_V3.to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    for half in [0, 32] {
        for set in [want.caps[2], want.caps[1], want.caps[0]] {
            caps.extend_from_slice(&(((set >> half) & 0xffff_ffff) as u32).to_ne_bytes());
        }
    }
    inj.write(data, &caps)?;
    call(libc::SYS_capset, [data, data + 8, 0, 0, 0, 0], "capset")?;
    for cap in (0..=MAX_CAP).filter(|c| want.caps[4] & (1 << c) != 0) {
        call(
            libc::SYS_prctl,
            [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
            "prctl(PR_CAP_AMBIENT_RAISE)",
        )?;
    }
    if keep && want.securebits & SECBIT_KEEP_CAPS == 0 {
        call(
            libc::SYS_prctl,
            [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
            "prctl(PR_SET_KEEPCAPS)",
        )?;
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
