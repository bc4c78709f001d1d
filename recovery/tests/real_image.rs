//! Introspection of a real guest's memory snapshot.
//!
//! Needs `OWVMM_TEST_SNAPSHOT` (a directory with `memory.bin`, from `owvmm ctl snapshot`)
//! and `OWVMM_TEST_KERNEL_DIR` (with `System.map` and `vmlinux.btf` of the guest's kernel).
//! The tests are `#[ignore]`d, so a plain `cargo test` lists them by name as ignored;
//! scripts/test sets both variables and runs them with `--include-ignored`, and then a
//! missing variable fails the test instead of passing it silently.

use std::collections::BTreeSet;
use std::path::PathBuf;

use owvmm_recovery::btf::Btf;
use owvmm_recovery::kernel::{find_kaslr_slide, Kernel};
use owvmm_recovery::manifest::{build_manifest, wire, Manifest};
use owvmm_recovery::process::FileKind;
use owvmm_recovery::regs::{CpuUserState, UserRegs};
use owvmm_recovery::symbols::SymbolTable;
use owvmm_recovery::tasks::{is_user_addr, FxSave, USER_CS};
use owvmm_recovery::{inspect, FlatMemory, Report};

/// The manifest's own parser, on the text the writer made.
fn parse_manifest(text: &str) -> Result<wire::Manifest, wire::ParseError> {
    wire::parse(text.as_bytes())
}

struct Image {
    memory: Vec<u8>,
    map: String,
    btf: Vec<u8>,
}

fn image() -> Option<Image> {
    let (Some(snap), Some(kdir)) = (
        std::env::var_os("OWVMM_TEST_SNAPSHOT"),
        std::env::var_os("OWVMM_TEST_KERNEL_DIR"),
    ) else {
        panic!("set OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR (scripts/test does)");
    };
    let (snap, kdir) = (PathBuf::from(snap), PathBuf::from(kdir));
    Some(Image {
        memory: std::fs::read(snap.join("memory.bin")).expect("memory.bin"),
        map: std::fs::read_to_string(kdir.join("System.map")).expect("System.map"),
        btf: std::fs::read(kdir.join("vmlinux.btf")).expect("vmlinux.btf"),
    })
}

fn run(img: &Image, memory: &[u8]) -> Report {
    inspect(&FlatMemory(memory), &img.map, &img.btf)
}

fn user_pids(r: &Report) -> BTreeSet<i32> {
    r.user_tasks().map(|t| t.pid).collect()
}

/// Writes a u64 at kernel virtual address `va` of the copy `mem`.
fn poke(img: &Image, mem: &mut [u8], va: u64, value: u64) {
    let syms = SymbolTable::parse_system_map(&img.map).expect("map");
    let btf = Btf::parse(&img.btf).expect("btf");
    let pa = {
        let flat = FlatMemory(&*mem);
        let k = Kernel::new(&flat, &syms, &btf).expect("kernel");
        k.virt_to_phys(va).expect("translate")
    };
    let pa = usize::try_from(pa).expect("pa");
    mem[pa..pa + 8].copy_from_slice(&value.to_le_bytes());
}

fn with_kernel<T>(img: &Image, f: impl FnOnce(&Kernel<'_>) -> T) -> T {
    let syms = SymbolTable::parse_system_map(&img.map).expect("map");
    let btf = Btf::parse(&img.btf).expect("btf");
    let flat = FlatMemory(&img.memory[..]);
    let k = Kernel::new(&flat, &syms, &btf).expect("kernel");
    f(&k)
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn finds_init_the_shell_loop_and_user_registers() {
    let Some(img) = image() else { return };
    let r = run(&img, &img.memory);
    println!("{r}");
    assert!(r.problems.is_empty(), "problems: {:#?}", r.problems);

    let init = r.task(1).expect("pid 1");
    assert_eq!(init.comm, "init");
    assert!(init.is_user());
    assert!(r.task(0).is_some_and(|t| t.is_kernel_thread()));
    assert!(r
        .tasks
        .iter()
        .any(|t| t.comm == "kthreadd" && t.is_kernel_thread()));

    // The exec'd shell loop: a `sh` whose command line holds the loop.
    let sh = r
        .user_tasks()
        .filter(|t| t.comm == "sh")
        .find(|t| {
            r.mm_of(t)
                .is_some_and(|mm| mm.cmdline.join(" ").contains("while"))
        })
        .expect("a sh running the --exec loop");
    let mm = r.mm_of(sh).expect("sh mm");
    assert!(mm.vmas.len() >= 5, "{:#?}", mm.vmas);
    assert_eq!(mm.vmas.len(), mm.map_count as usize);
    assert!(
        mm.vmas.iter().any(|v| v.name.as_deref() == Some("[stack]")),
        "no stack VMA"
    );
    let heap_like = mm
        .vmas
        .iter()
        .any(|v| v.name.as_deref() == Some("[heap]") || (v.file_addr == 0 && v.flags & 2 != 0));
    assert!(heap_like, "no heap-like VMA");
    assert!(
        mm.vmas.iter().any(|v| v.file.is_some() && v.flags & 4 != 0),
        "no executable file mapping"
    );
    assert!(mm.vmas.windows(2).all(|w| w[0].end <= w[1].start));

    // Any process page table maps the kernel: the KASLR probe finds this kernel's slide.
    let syms = SymbolTable::parse_system_map(&img.map).expect("map");
    let slide = find_kaslr_slide(&FlatMemory(&img.memory[..]), &syms, mm.pgd_phys, false);
    assert_eq!(slide, Some(r.layout.as_ref().expect("layout").slide));

    // Every user task has a user-mode frame at the top of its kernel stack.
    for t in r.user_tasks() {
        let regs = t
            .regs
            .unwrap_or_else(|| panic!("task {} has no regs", t.pid));
        assert_eq!(regs.cs, USER_CS, "task {} cs", t.pid);
        assert!(
            is_user_addr(regs.ip) && regs.ip != 0,
            "task {} ip {:#x}",
            t.pid,
            regs.ip
        );
        assert!(is_user_addr(regs.sp), "task {} sp {:#x}", t.pid, regs.sp);
        let mm = r.mm_of(t).expect("mm");
        // A task caught inside execve may already have its new, still empty, mm.
        if matches!(regs.syscall(), Some(59 | 322)) {
            continue;
        }
        assert!(
            mm.vmas
                .iter()
                .any(|v| v.start <= regs.ip && regs.ip < v.end && v.flags & 4 != 0),
            "task {}: ip {:#x} not in an executable VMA",
            t.pid,
            regs.ip
        );
    }
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn broken_task_links_still_give_every_process() {
    let Some(img) = image() else { return };
    let good = run(&img, &img.memory);
    let all = user_pids(&good);
    let (init_task, tasks_off) = with_kernel(&img, |k| {
        (
            k.symbol("init_task").expect("init_task"),
            k.offset_of("task_struct", "tasks").expect("tasks"),
        )
    });
    let head = init_task + tasks_off;

    // init_task.tasks.next = NULL: the backward walk recovers the ring.
    let mut mem = img.memory.clone();
    poke(&img, &mut mem, head, 0);
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert_eq!(user_pids(&r), all);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("task list: bad next pointer 0x0")),
        "{:#?}",
        r.problems
    );

    // A cycle: the third leader's tasks.next points back at the second.
    let mut mem = img.memory.clone();
    let leaders: Vec<u64> = good
        .tasks
        .iter()
        .filter(|t| t.is_leader())
        .map(|t| t.addr + tasks_off)
        .collect();
    assert!(leaders.len() > 4);
    poke(&img, &mut mem, leaders[3], leaders[2]);
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert_eq!(user_pids(&r), all);
    assert!(
        r.problems.iter().any(|p| p.contains("task list")),
        "{:#?}",
        r.problems
    );

    // Both directions broken at the head: only init_task remains, with reasons.
    let mut mem = img.memory.clone();
    poke(&img, &mut mem, head, 0xffff_ffff_ffff_0000);
    poke(&img, &mut mem, head + 8, 0x4141_4141_4141_4141);
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert_eq!(r.tasks.len(), 1);
    assert!(r.problems.len() >= 2, "{:#?}", r.problems);

    // A wild stack pointer for pid 1.
    let mut mem = img.memory.clone();
    let stack_off = with_kernel(&img, |k| {
        k.offset_of("task_struct", "stack").expect("stack")
    });
    let init = good.task(1).expect("init").addr;
    poke(&img, &mut mem, init + stack_off, 0xffff_c900_dead_0000);
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert!(r.task(1).is_some_and(|t| t.regs.is_none()));
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("task 1: stack unreadable")),
        "{:#?}",
        r.problems
    );
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn smashed_maple_tree_gives_partial_vmas_with_reasons() {
    let Some(img) = image() else { return };
    let good = run(&img, &img.memory);
    let sh = good
        .user_tasks()
        .find(|t| t.comm == "sh")
        .expect("sh")
        .clone();
    let (root_off, mt_off) = with_kernel(&img, |k| {
        (
            k.offset_of("maple_tree", "ma_root").expect("ma_root"),
            k.offset_of("mm_struct", "mm_mt").expect("mm_mt"),
        )
    });
    let root_va = sh.mm + mt_off + root_off;
    let root = with_kernel(&img, |k| k.read_u64(root_va).expect("root"));
    let node = root & !0xff;

    // Fill the root node with a pattern: its VMAs are lost, with reasons; others survive.
    let mut mem = img.memory.clone();
    for i in 0..32 {
        poke(&img, &mut mem, node + i * 8, 0x4242_4242_4242_4242);
    }
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    let mm = r.mm_of(&sh).expect("mm still read");
    assert!(mm.vmas.len() < good.mm_of(&sh).expect("mm").vmas.len());
    let tag = format!("pid {}:", sh.tgid);
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with(&tag) && p.contains("maple tree")),
        "{:#?}",
        r.problems
    );
    assert!(r
        .problems
        .iter()
        .any(|p| p.starts_with(&tag) && p.contains("map_count")));
    // Other processes are untouched.
    let init = r.task(1).expect("init");
    assert_eq!(
        r.mm_of(init).expect("init mm").vmas,
        good.mm_of(good.task(1).expect("init")).expect("mm").vmas
    );

    // Root pointing outside guest memory.
    let mut mem = img.memory.clone();
    poke(
        &img,
        &mut mem,
        root_va,
        0xffff_8880_0000_0000 + (1 << 40) + (root & 0xff),
    );
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert!(r.mm_of(&sh).expect("mm").vmas.is_empty());
    assert!(r
        .problems
        .iter()
        .any(|p| p.starts_with(&tag) && p.contains("unreadable")));

    // Root node's first slot pointing at the node itself (a loop).
    let mut mem = img.memory.clone();
    let is_leaf = (root >> 3) & 0xf < 2;
    let slot0 = node + if is_leaf { 128 } else { 80 };
    poke(&img, &mut mem, slot0, root);
    let r = run(&img, &mem);
    eprintln!("--- {:#?}", r.problems);
    assert!(!r.problems.is_empty());
}

/// The vCPUs as the VMM would describe them: every CPU caught in kernel mode.
fn kernel_mode_cpus(r: &Report) -> Vec<CpuUserState> {
    r.cpus
        .iter()
        .map(|c| CpuUserState {
            gs_base: c.per_cpu_offset,
            kernel_gs_base: 0,
            cpl3: false,
            regs: UserRegs::default(),
            fxsave: FxSave::init(),
        })
        .collect()
}

fn manifest(img: &Image, memory: &[u8], r: &Report) -> Manifest {
    let syms = SymbolTable::parse_system_map(&img.map).expect("map");
    let btf = Btf::parse(&img.btf).expect("btf");
    let flat = FlatMemory(memory);
    let k = Kernel::new(&flat, &syms, &btf).expect("kernel");
    build_manifest(&k, r, &kernel_mode_cpus(r))
}

/// The `sh` running the `--exec` loop.
fn counter(r: &Report) -> owvmm_recovery::tasks::Task {
    r.user_tasks()
        .filter(|t| t.comm == "sh")
        .find(|t| {
            r.mm_of(t)
                .is_some_and(|mm| mm.cmdline.join(" ").contains("while"))
        })
        .expect("a sh running the --exec loop")
        .clone()
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn process_state_pages_and_manifest() {
    let Some(img) = image() else { return };
    let r = run(&img, &img.memory);
    let sh = counter(&r);
    // Files: stdin/stdout/stderr are character devices (console, serial or /dev/null).
    let p = &r.processes.get(&sh.tgid).expect("process read").value;
    assert!(r.processes[&sh.tgid].is_complete());
    assert_eq!(p.cwd.as_deref(), Some("/"));
    for fd in 0..3 {
        let f = p.files.iter().find(|f| f.fd == fd).expect("fd 0-2 open");
        assert_eq!(f.kind(), FileKind::Chr, "fd {fd}");
        let path = f.path.as_deref().expect("path");
        assert!(
            ["/dev/console", "/dev/ttyS0", "/dev/null"].contains(&path),
            "fd {fd}: {path}"
        );
    }
    // Signal actions: the shell handles SIGCHLD.
    assert!(
        p.sigactions.iter().any(|a| a.signo == 17),
        "{:?}",
        p.sigactions
    );
    // Thread state: an FXSAVE image with a sane control word and MXCSR.
    let fx = sh.fpu.expect("fpu");
    assert_eq!(fx.fcw() & 0x3f, 0x3f, "fcw {:#x}", fx.fcw());
    assert_eq!(fx.mxcsr() & 0xffff_0000, 0, "mxcsr {:#x}", fx.mxcsr());
    // Pages: the stack has anonymous pages; the text is page cache, not anon.
    let mm = r.mm_of(&sh).expect("mm");
    assert!(mm.auxv.len() >= 4 && mm.auxv.len() & 1 == 0 && mm.auxv[mm.auxv.len() - 2] == 0);
    let stack = mm
        .vmas
        .iter()
        .find(|v| v.name.as_deref() == Some("[stack]"))
        .expect("stack");
    assert!(stack.pages.is_complete());
    assert!(stack.pages.value.runs.iter().any(|r| r.anon));
    let text = mm
        .vmas
        .iter()
        .find(|v| v.file.is_some() && v.flags & 4 != 0)
        .expect("text");
    assert!(!text.pages.value.runs.is_empty());
    assert!(text.pages.value.runs.iter().all(|r| !r.anon));
    for v in &mm.vmas {
        for run in &v.pages.value.runs {
            assert!(run.vaddr >= v.start && run.vaddr + run.len <= v.end);
            assert!(run.phys + run.len <= img.memory.len() as u64);
        }
    }

    // The manifest has the counter, not pid 1, and parses.
    let m = manifest(&img, &img.memory, &r);
    println!("{}", m.text);
    eprintln!("excluded {:?} notes {:?}", m.excluded, m.notes);
    assert!(m.processes.contains(&sh.tgid), "{:?}", m.excluded);
    assert!(!m.processes.contains(&1));
    assert!(m.excluded.iter().any(|e| e.pid == 1));
    let sum = parse_manifest(&m.text).expect("manifest parses");
    assert_eq!(sum, m.manifest);
    // A process caught inside execve is an `exec` block.
    assert_eq!(sum.processes.len() + sum.execs.len(), m.processes.len());
    assert!(
        !sum.files.is_empty(),
        "the busybox binary lives on the initramfs"
    );
    assert!(m.text.contains(&format!("\nprocess {} sh\n", sh.tgid)));
    assert!(m.text.contains("\ncwd /\n"));
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn corrupt_fd_tables_exclude_the_process_with_a_reason() {
    let Some(img) = image() else { return };
    let good = run(&img, &img.memory);
    let sh = counter(&good);
    let (fdt_off, max_off, fd_off) = with_kernel(&img, |k| {
        (
            k.offset_of("files_struct", "fdt").expect("fdt"),
            k.offset_of("fdtable", "max_fds").expect("max_fds"),
            k.offset_of("fdtable", "fd").expect("fd"),
        )
    });
    let fdt = with_kernel(&img, |k| k.read_u64(sh.files + fdt_off).expect("fdt"));
    let tag = format!("pid {}:", sh.tgid);
    for (what, va, value) in [
        ("wild fdt", sh.files + fdt_off, 0x4141_4141_4141_4141u64),
        (
            "fdt outside memory",
            sh.files + fdt_off,
            0xffff_8880_0000_0000 + (1 << 40),
        ),
        ("wild fd array", fdt + fd_off, 0xffff_c900_dead_0000),
    ] {
        let mut mem = img.memory.clone();
        poke(&img, &mut mem, va, value);
        let r = run(&img, &mem);
        eprintln!("--- {what}: {:#?}", r.problems);
        assert!(
            r.problems.iter().any(|p| p.starts_with(&tag)),
            "{what}: {:#?}",
            r.problems
        );
        let m = manifest(&img, &mem, &r);
        assert!(!m.processes.contains(&sh.tgid), "{what}");
        assert!(m.excluded.iter().any(|e| e.pid == sh.tgid), "{what}");
        parse_manifest(&m.text).expect("parses");
    }
    // A huge max_fds (the low 32 bits hold it; keep the rest of the word).
    let mut mem = img.memory.clone();
    let word = with_kernel(&img, |k| k.read_u64(fdt + max_off).expect("max_fds"));
    poke(
        &img,
        &mut mem,
        fdt + max_off,
        (word & !0xffff_ffff) | 0xffff_ff00,
    );
    // Bounded by what it reads, not by the clock: far less than the whole guest memory.
    let flat = FlatMemory(&mem[..]);
    let budget = owvmm_recovery::budget::Budgeted::new(
        &flat,
        owvmm_recovery::budget::Limits {
            time: std::time::Duration::from_secs(3600),
            bytes: 64 << 20,
        },
    );
    let r = inspect(&budget, &img.map, &img.btf);
    assert_eq!(
        budget.exhausted(),
        None,
        "read {} bytes",
        budget.bytes_read()
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with(&tag) && p.contains("max_fds")),
        "{:#?}",
        r.problems
    );
    let m = manifest(&img, &mem, &r);
    assert!(!m.processes.contains(&sh.tgid));
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn cyclic_page_cache_of_the_executable_excludes_its_users() {
    let Some(img) = image() else { return };
    let good = run(&img, &img.memory);
    let sh = counter(&good);
    let exe_file = good.mm_of(&sh).expect("mm").exe_file;
    let (head_va, head, slots_off) = with_kernel(&img, |k| {
        let inode = k.read_field("file", "f_inode", exe_file).expect("inode");
        let mapping = k.read_field("inode", "i_mapping", inode).expect("mapping");
        let head_va = mapping
            + k.offset_of("address_space", "i_pages").expect("i_pages")
            + k.offset_of("xarray", "xa_head").expect("xa_head");
        (
            head_va,
            k.read_u64(head_va).expect("head"),
            k.offset_of("xa_node", "slots").expect("slots"),
        )
    });
    assert_eq!(head & 3, 2, "busybox has more than one cached page: a node");
    let node = head - 2;
    for (what, va, value) in [
        ("root slot 0 -> root", node + slots_off, head),
        ("root slot 1 -> root", node + slots_off + 8, head),
        (
            "head -> wild node",
            head_va,
            0xffff_8880_0000_0000 + (1 << 40) + 2,
        ),
    ] {
        let mut mem = img.memory.clone();
        poke(&img, &mut mem, va, value);
        let r = run(&img, &mem);
        let m = manifest(&img, &mem, &r);
        eprintln!("--- {what}: {:?}", m.excluded);
        let e = m
            .excluded
            .iter()
            .find(|e| e.pid == sh.tgid)
            .unwrap_or_else(|| panic!("{what}: sh not excluded"));
        assert!(e.reason.contains("page cache"), "{what}: {}", e.reason);
        parse_manifest(&m.text).expect("parses");
    }
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn garbage_inputs_do_not_panic() {
    let Some(img) = image() else { return };
    // Wrong BTF, empty map, and memory that is all zeros.
    let r = inspect(&FlatMemory(&img.memory[..]), &img.map, b"not btf");
    assert!(r.tasks.is_empty() && !r.problems.is_empty());
    let r = inspect(&FlatMemory(&img.memory[..]), "", &img.btf);
    assert!(r.tasks.is_empty() && !r.problems.is_empty());
    let zeros = vec![0u8; 1 << 20];
    let r = inspect(&FlatMemory(&zeros[..]), &img.map, &img.btf);
    assert!(!r.problems.is_empty());
}

/// Small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
#[ignore = "needs OWVMM_TEST_SNAPSHOT and OWVMM_TEST_KERNEL_DIR: run by scripts/test"]
fn random_word_corruption_never_panics_or_hangs() {
    let Some(img) = image() else { return };
    let good = run(&img, &img.memory);
    let syms = SymbolTable::parse_system_map(&img.map).expect("map");
    let btf = Btf::parse(&img.btf).expect("btf");
    let size = |name: &str| {
        btf.struct_id(name)
            .and_then(|id| btf.size_of(id).ok())
            .expect("size")
    };
    // Structures worth hitting: (kernel address, size).
    let mut targets: Vec<(u64, u64)> = Vec::new();
    for t in &good.tasks {
        targets.push((t.addr, size("task_struct")));
    }
    for t in good.user_tasks() {
        targets.push((t.files, size("files_struct")));
    }
    for mm in good.mms.values() {
        targets.push((mm.addr, size("mm_struct")));
        for v in &mm.vmas {
            targets.push((v.addr, size("vm_area_struct")));
        }
    }
    let (root_off, mt_off) = with_kernel(&img, |k| {
        (
            k.offset_of("maple_tree", "ma_root").expect("ma_root"),
            k.offset_of("mm_struct", "mm_mt").expect("mm_mt"),
        )
    });
    for mm in good.mms.values() {
        let root = with_kernel(&img, |k| {
            k.read_u64(mm.addr + mt_off + root_off).expect("root")
        });
        targets.push((root & !0xff, 256));
    }
    let pas: Vec<(u64, u64)> = {
        let flat = FlatMemory(&img.memory[..]);
        let k = Kernel::new(&flat, &syms, &btf).expect("kernel");
        targets
            .iter()
            .filter_map(|&(va, len)| k.virt_to_phys(va).ok().map(|pa| (pa, len)))
            .collect()
    };
    let mut mem = img.memory.clone();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let rounds = std::env::var("OWVMM_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for round in 0..rounds {
        // Overwrite 1-4 aligned words, run, then restore.
        let mut saved = Vec::new();
        for _ in 0..=rng.below(4) {
            let (pa, len) = pas[usize::try_from(rng.below(pas.len() as u64)).expect("idx")];
            let at = usize::try_from(pa + (rng.below(len / 8) * 8)).expect("pa");
            let (other, _) = targets[usize::try_from(rng.below(targets.len() as u64)).expect("i")];
            let value = match rng.below(6) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.next(),
                3 => other,
                4 => other + rng.below(512),
                _ => 0xffff_8880_0000_0000 + rng.below(1 << 32),
            };
            let mut old = [0u8; 8];
            old.copy_from_slice(&mem[at..at + 8]);
            saved.push((at, old));
            mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        let start = std::time::Instant::now();
        let r = run(&img, &mem);
        let m = manifest(&img, &mem, &r);
        if let Err(e) = parse_manifest(&m.text) {
            panic!("round {round}: manifest does not parse: {e}\n{}", m.text);
        }
        let took = start.elapsed();
        assert!(
            took < std::time::Duration::from_secs(20),
            "round {round} took {took:?}"
        );
        // Whatever was corrupted, losing a task always comes with a reason.
        if r.tasks.len() < good.tasks.len() {
            assert!(!r.problems.is_empty(), "round {round}");
        }
        for (at, old) in saved.into_iter().rev() {
            mem[at..at + 8].copy_from_slice(&old);
        }
    }
}
