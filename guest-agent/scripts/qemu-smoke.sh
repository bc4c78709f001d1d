#!/bin/sh
# Boots ow-agent as /init of a minimal busybox initramfs under QEMU and checks the channel.
# A smoke test for people, not part of `cargo test` (a boot takes minutes on the kvm_pvm
# hosts, see /work/shared/ENVIRONMENT.md).
#
#   guest-agent/scripts/qemu-smoke.sh [exec|shell] [KERNEL]   (default: exec /tmp/gk-out/vmlinux)
#
# exec:  /etc/owvmm/exec runs `echo hello from exec; sleep 3`. Checks `ready`, heartbeats,
#        `ping 7` -> `pong 7`, `err` for an unknown request, `time` -> `time-set`, the
#        command's output on the console, and the power-off after the command ends.
# shell: no exec file, and no /dev/console or /dev/null in the initramfs. Checks the
#        interactive shell on ttyS0 (environment, controlling tty, the clock set by `time`)
#        and busybox `poweroff` (SIGUSR2 to PID 1) ending in `exited ...` and `poweroff`.
#
# Environment: WORK (default /tmp/agent-test), CARGO_TARGET_DIR (default /tmp/agent-target),
# CMDLINE (default: `owvmm run --print-cmdline` of target/release/owvmm, else the workarounds this host needs),
# BOOT_TIMEOUT seconds (default 600).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/.." && pwd)
mode=${1:-exec}
kernel=${2:-/tmp/gk-out/vmlinux}
case "$mode" in
    exec | shell) ;;
    *) echo "usage: $0 [exec|shell] [KERNEL]" >&2; exit 2 ;;
esac
work=${WORK:-/tmp/agent-test}
target_dir=${CARGO_TARGET_DIR:-/tmp/agent-target}
boot_timeout=${BOOT_TIMEOUT:-600}
if [ -z "${CMDLINE:-}" ]; then
    if [ -x "$repo/target/release/owvmm" ]; then   # default + this host's quirks
        CMDLINE=$("$repo/target/release/owvmm" run --print-cmdline 2>/dev/null)
    else
        CMDLINE="console=ttyS0 owvmm.pvm_quirks=1 noxsave clearcpuid=popcnt,smap,cx16"
    fi
fi

echo "== building the static agent"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
    cargo build -p ow-agent --release --target x86_64-unknown-linux-gnu)
agent="$target_dir/x86_64-unknown-linux-gnu/release/ow-agent"
if readelf -l "$agent" | grep -q INTERP; then
    echo "ow-agent is not static" >&2
    exit 1
fi

echo "== building the initramfs ($mode) in $work/root"
rm -rf "$work/root"
mkdir -p "$work/root"
cd "$work/root"
mkdir -p bin sbin etc/owvmm dev proc sys tmp
strip -o init "$agent"
cp /bin/busybox bin/busybox
for applet in $(bin/busybox --list-full); do
    name=$(basename "$applet")
    case "$applet" in
        sbin/* | usr/sbin/*) dir=sbin ;;
        *) dir=bin ;;
    esac
    [ -e "$dir/$name" ] || ln -s /bin/busybox "$dir/$name"
done
if [ "$mode" = exec ]; then
    mknod -m 600 dev/console c 5 1
    mknod -m 666 dev/null c 1 3
    printf '# ow-agent smoke test\necho hello from exec; sleep 3\n' > etc/owvmm/exec
fi
find . | cpio -o -H newc --quiet > "$work/initramfs.cpio"
ls -l "$work/initramfs.cpio"

echo "== booting $kernel (console: $work/console.log, channel: $work/channel.log)"
rm -f "$work/agent.sock" "$work/console.sock" "$work/console.log"
timeout "$boot_timeout" qemu-system-x86_64 -accel kvm -cpu host,-arch-capabilities -m 128 \
    -display none -no-reboot -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -serial "unix:$work/console.sock,server,nowait" \
    -serial "unix:$work/agent.sock,server,nowait" \
    -monitor none -append "$CMDLINE" &
qemu=$!

rc=0
python3 - "$mode" "$work" "$boot_timeout" <<'PYTHON' || rc=$?
import select, socket, sys, time

mode, work, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.time()


def connect(path):
    while time.time() - start < 30:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            time.sleep(0.2)
    sys.exit("cannot connect to " + path)


chan, con = connect(work + "/agent.sock"), connect(work + "/console.sock")
logs = {chan: open(work + "/channel.log", "w"), con: open(work + "/console.log", "w")}
bufs, seen, tty0 = {chan: b"", con: b""}, [], []


def stamp():
    return f"[{time.time() - start:7.1f}s]"


def send(sock, line):
    sock.sendall(line.encode() + b"\n")
    print(stamp(), ">>" if sock is chan else "tty0 <<", line, flush=True)


step = 0
while time.time() - start < limit and seen[-1:] not in (["poweroff"], ["reboot"]):
    readable, _, _ = select.select([chan, con], [], [], 1.0)
    for sock in readable:
        data = sock.recv(4096)
        if not data:
            sys.exit("end of file on " + ("channel" if sock is chan else "console"))
        logs[sock].write(data.decode(errors="replace"))
        logs[sock].flush()
        bufs[sock] += data
        while b"\n" in bufs[sock]:
            raw, bufs[sock] = bufs[sock].split(b"\n", 1)
            line = raw.decode(errors="replace").rstrip("\r")
            if sock is con:
                tty0.append(line)
                if mode == "shell" and step >= 2:
                    print(stamp(), "tty0:", line, flush=True)
                if step == 2 and line.strip().startswith("1234567"):
                    send(con, "poweroff")
                    step = 3
                continue
            seen.append(line)
            print(stamp(), "<<", line, flush=True)
            if line.startswith("ready ") and step == 0:
                step = 1
                if mode == "exec":
                    send(chan, "ping 7")
                    send(chan, "frob")
                    send(chan, "time %d.%09d" % divmod(time.time_ns(), 10**9))
                else:
                    send(chan, "time 1234567890.500000000")
            if line.startswith("time-set ") and mode == "shell" and step == 1:
                send(con, "echo TERM=$TERM HOME=$HOME; tty; sleep 100 & date -u +%s")
                step = 2


def has(prefix):
    return any(l.startswith(prefix) for l in seen)


ok = has("ready ") and has("time-set ") and has("exited ") and seen[-1:] == ["poweroff"]
if mode == "exec":
    ok = ok and "pong 7" in seen and has("hb ") and "err unknown request 'frob'" in seen
    ok = ok and "hello from exec" in tty0
else:
    ok = ok and "TERM=linux HOME=/" in tty0 and "/dev/ttyS0" in tty0
    ok = ok and any("SIGUSR2" in l for l in tty0)
print("SMOKE", mode, "OK" if ok else "INCOMPLETE", flush=True)
sys.exit(0 if ok else 1)
PYTHON

# After reboot(RB_POWER_OFF) a guest without a power-off driver halts; QEMU stays up.
sleep 5
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
echo "== console tail"
tail -n 12 "$work/console.log"
exit $rc
