#!/usr/bin/env bash
# Build the owvmm guest kernel from Debian's linux-source-6.1.
#
#   build-kernel.sh OUT_DIR
#
# Inputs (owvmm.config, patches/NNNN-*.patch) are taken from $OWVMM_KERNEL_INPUTS,
# by default the directory of this script. The build happens in OUT_DIR.tmp and is
# renamed to OUT_DIR only when complete, so an existing OUT_DIR is always a finished
# build. OUT_DIR then holds: vmlinux, bzImage, System.map, vmlinux.btf, config,
# version, build.log.
#
# Environment:
#   OWVMM_KERNEL_INPUTS     directory with owvmm.config and patches/ (default: script dir)
#   OWVMM_KERNEL_SOURCE     kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   OWVMM_KERNEL_KEEP_WORK  1: keep the built source tree in OUT_DIR.src (for
#                           incremental rebuilds by hand); default: delete it
#   OWVMM_KERNEL_JOBS       parallel jobs (default: nproc)
set -euo pipefail

log() { printf 'owvmm-image: %s\n' "$*" >&2; }
die() { printf 'owvmm-image: error: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
inputs=${OWVMM_KERNEL_INPUTS:-$script_dir}
inputs=$(cd "$inputs" && pwd) || die "OWVMM_KERNEL_INPUTS=$inputs is not a directory"
fragment=$inputs/owvmm.config
patch_dir=$inputs/patches
source_tarball=${OWVMM_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
jobs=${OWVMM_KERNEL_JOBS:-$(nproc 2>/dev/null || echo 2)}
[[ -f $fragment ]] || die "config fragment not found: $fragment"

out=$1
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
stage=$out.tmp

# A clean environment for kbuild: nothing inherited from cargo/make or a cross setup.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES GNUMAKEFLAGS CARGO_MAKEFLAGS \
      ARCH SUBARCH CROSS_COMPILE O KBUILD_OUTPUT KCONFIG_CONFIG CC LD CFLAGS LDFLAGS \
      KCFLAGS KCPPFLAGS KAFLAGS LOCALVERSION INSTALL_PATH
export LC_ALL=C
export KBUILD_BUILD_USER=owvmm KBUILD_BUILD_HOST=owvmm
export KBUILD_BUILD_TIMESTAMP="${KBUILD_BUILD_TIMESTAMP:-Thu Jan  1 00:00:00 UTC 1970}"
export ARCH=x86_64

# --- one build per OUT_DIR at a time; a finished OUT_DIR is a cache hit ---
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out.lock"
    if ! flock -n 9; then
        log "waiting for another build of $out"
        flock 9
    fi
fi
if [[ -f $out/vmlinux && -f $out/version ]]; then
    log "done (already built: $out)"
    exit 0
fi

# --- host packages ---
required_pkgs=(gcc make binutils libc6-dev flex bison bc dwarves libelf-dev libssl-dev
               xz-utils patch)
[[ -n ${OWVMM_KERNEL_SOURCE:-} ]] || required_pkgs+=(linux-source-6.1)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${required_pkgs[@]}"; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $st == "install ok installed" ]] || missing+=("$p")
    done
else
    for c in gcc make ld objcopy flex bison bc pahole xz patch; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing tools: ${missing[*]} (install gcc, make, binutils, flex, bison, bc, pahole/dwarves, libelf and openssl headers, xz, patch)"
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    cmd="apt-get install -y ${missing[*]}"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing missing packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update >&2 || die "apt-get update failed"
            apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
                || die "could not install: ${missing[*]}"
        fi
    else
        die "missing Debian packages; run as root: $cmd"
    fi
fi
[[ -f $source_tarball ]] || die "kernel source not found: $source_tarball (apt-get install -y linux-source-6.1)"

# --- fresh staging directory ---
rm -rf "$stage"
mkdir -p "$stage"
build_log=$stage/build.log
: >"$build_log"
if [[ ${OWVMM_KERNEL_KEEP_WORK:-0} == 1 ]]; then
    work=$out.src
    rm -rf "$work"
else
    work=$stage/work
fi
mkdir -p "$work"

fail_with_log() {
    log "error: $1"
    log "last 40 lines of $build_log:"
    tail -n 40 "$build_log" >&2 || true
    exit 1
}

# --- extracting ---
log "extracting $(basename "$source_tarball")"
tar -xf "$source_tarball" -C "$work" || die "extracting $source_tarball failed"
shopt -s nullglob
tops=("$work"/*/)
shopt -u nullglob
[[ ${#tops[@]} -eq 1 && -f ${tops[0]}/Makefile ]] || die "unexpected layout of $source_tarball"
src=${tops[0]%/}

# --- patching ---
shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob
log "patching (${#patches[@]} patches)"
for p in "${patches[@]}"; do   # glob order = NNNN order
    echo "=== patch $(basename "$p")" >>"$build_log"
    patch -p1 --forward --batch -d "$src" <"$p" >>"$build_log" 2>&1 \
        || fail_with_log "patch $(basename "$p") does not apply"
done

# --- configuring ---
log "configuring (tinyconfig + $(basename "$fragment"))"
{
    make -C "$src" tinyconfig &&
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$fragment") &&
    make -C "$src" olddefconfig
} >>"$build_log" 2>&1 || fail_with_log "kernel configuration failed"

# Every line of the fragment must have survived olddefconfig (dependencies can
# silently drop an option).
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        got=$(grep -m1 "^$opt=" "$src/.config" | cut -d= -f2- || true)
        [[ $got == "$want" ]] || bad+=("$opt (wanted $want, got ${got:-not set})")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
        opt=${BASH_REMATCH[1]}
        got=$(grep -m1 "^$opt=" "$src/.config" | cut -d= -f2- || true)
        [[ -z $got || $got == n ]] || bad+=("$opt (wanted not set, got $got)")
    fi
done <"$fragment"
if [[ ${#bad[@]} -gt 0 ]]; then
    for b in "${bad[@]}"; do log "config option not as requested: $b"; done
    die "kernel configuration check failed (${#bad[@]} options)"
fi
cp "$src/.config" "$stage/config"

# --- compiling ---
log "compiling (make -j$jobs vmlinux bzImage, output in $build_log)"
make -C "$src" -j"$jobs" vmlinux bzImage >>"$build_log" 2>&1 &
make_pid=$!
trap 'kill "$make_pid" 2>/dev/null || true' EXIT INT TERM
last=-1
while kill -0 "$make_pid" 2>/dev/null; do
    sleep 5
    n=$(grep -cE '^  (CC|AS|LD|AR|HOSTCC|HOSTLD|OBJCOPY|BTF|GEN|KSYMS|LZ4|SYSMAP|VDSO|VDSO2C)' "$build_log" || true)
    if [[ $n != "$last" ]]; then
        log "compiling ($n objects built)"
        last=$n
    fi
done
status=0
wait "$make_pid" || status=$?
trap - EXIT INT TERM
[[ $status -eq 0 ]] || fail_with_log "kernel build failed (make exit $status)"

# --- collecting ---
cp "$src/vmlinux" "$stage/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/System.map" "$stage/System.map"
make -s -C "$src" kernelrelease >"$stage/version" 2>>"$build_log" \
    || fail_with_log "make kernelrelease failed"
objcopy -O binary --only-section=.BTF "$stage/vmlinux" "$stage/vmlinux.btf" \
    || die "could not extract .BTF from vmlinux"
magic=$(od -An -tx1 -N2 "$stage/vmlinux.btf" | tr -d ' \n')
[[ $magic == 9feb ]] || die "vmlinux.btf has no BTF header (got '$magic')"
grep -q ' T entry_SYSCALL_64$' "$stage/System.map" || die "System.map looks wrong"

if [[ ${OWVMM_KERNEL_KEEP_WORK:-0} == 1 ]]; then
    log "source tree kept in $work"
else
    rm -rf "$work"
fi
rm -rf "$out"
mv "$stage" "$out"
log "done: $out (linux $(cat "$out/version"))"
