#!/bin/sh
# Boots ow-agent as /init of a minimal busybox initramfs under QEMU and checks the channel:
# `ready`, heartbeats, `ping 7` -> `pong 7`, a `time` request, and the power-off after the
# exec command ends. A smoke test for people, not part of `cargo test` (a boot takes
# minutes on the kvm_pvm hosts, see /work/shared/ENVIRONMENT.md).
#
#   guest-agent/scripts/qemu-smoke.sh [KERNEL]      (default /tmp/gk-out/vmlinux)
#
# Environment: WORK (default /tmp/agent-test), CARGO_TARGET_DIR (default /tmp/agent-target),
# CMDLINE (default: guest-kernel/cmdline if present, else the workarounds of ENVIRONMENT.md),
# BOOT_TIMEOUT seconds (default 600).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/.." && pwd)
kernel=${1:-/tmp/gk-out/vmlinux}
work=${WORK:-/tmp/agent-test}
target_dir=${CARGO_TARGET_DIR:-/tmp/agent-target}
boot_timeout=${BOOT_TIMEOUT:-600}
if [ -z "${CMDLINE:-}" ]; then
    if [ -f "$repo/guest-kernel/cmdline" ]; then
        CMDLINE=$(cat "$repo/guest-kernel/cmdline")
    else
        CMDLINE="console=ttyS0 noxsave clearcpuid=popcnt,smap nopti"
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

echo "== building the initramfs in $work/root"
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
mknod -m 600 dev/console c 5 1
mknod -m 666 dev/null c 1 3
cat > etc/owvmm/exec <<'EOF'
# ow-agent smoke test
echo hello from exec; sleep 3
EOF
find . | cpio -o -H newc --quiet > "$work/initramfs.cpio"
ls -l "$work/initramfs.cpio"

echo "== booting $kernel (console: $work/console.log, channel: $work/channel.log)"
rm -f "$work/agent.sock"
timeout "$boot_timeout" qemu-system-x86_64 -accel kvm -cpu host,-arch-capabilities -m 128 \
    -display none -no-reboot -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -serial "file:$work/console.log" -serial "unix:$work/agent.sock,server,nowait" \
    -monitor none -append "$CMDLINE" &
qemu=$!

rc=0
python3 - "$work/agent.sock" "$work/channel.log" "$boot_timeout" <<'EOF' || rc=$?
import socket, sys, time
path, log, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.time()
s = None
while s is None and time.time() - start < 30:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path)
    except OSError:
        s = None; time.sleep(0.2)
if s is None:
    sys.exit("cannot connect to " + path)
s.settimeout(1.0)
out = open(log, "w")
buf, seen, sent = b"", [], set()
def send(line):
    s.sendall(line.encode() + b"\n"); sent.add(line.split()[0])
    print(f"[{time.time()-start:7.1f}s] >> {line}", flush=True)
while time.time() - start < limit:
    try:
        d = s.recv(4096)
    except socket.timeout:
        continue
    if not d:
        break
    buf += d
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        line = line.decode(errors="replace")
        seen.append(line); out.write(line + "\n"); out.flush()
        print(f"[{time.time()-start:7.1f}s] << {line}", flush=True)
        if line.startswith("ready ") and "ping" not in sent:
            send("ping 7"); send("time %d.%09d" % divmod(time.time_ns(), 10**9)); send("frob")
        if line in ("poweroff", "reboot"):
            break
    if seen and seen[-1] in ("poweroff", "reboot"):
        break
ok = (any(l.startswith("ready ") for l in seen) and "pong 7" in seen
      and any(l.startswith("hb ") for l in seen) and any(l.startswith("time-set ") for l in seen)
      and any(l.startswith("exited ") for l in seen) and seen[-1:] == ["poweroff"])
print("CHANNEL", "OK" if ok else "INCOMPLETE", flush=True)
sys.exit(0 if ok else 1)
EOF
# After reboot(RB_POWER_OFF) a guest without a power-off driver halts; give QEMU a moment.
sleep 5
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
echo "== console tail"
tail -n 25 "$work/console.log"
exit $rc
