//! Small static helper programs compiled on demand with `gcc -static`, usable on the host and
//! inside minimal (busybox) container root filesystems.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Source of `alloc`.
///
/// `alloc <MiB> [--fork-child]`: maps and touches memory in 1 MiB steps (memset, so the pages
/// are really charged) until `<MiB>` MiB are allocated, then sleeps forever.
/// With `--fork-child` it behaves like a container's PID 1: it forks a child that does the
/// allocating, prints the child's pid (as seen in its own pid namespace) as the first line of
/// stdout, reaps the child when it dies, and stays alive sleeping.
/// Nothing else is printed (usage errors go to stderr with exit code 2).
pub const ALLOC_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

static void sleep_forever(void) {
    for (;;)
        pause();
}

static void allocate(long mib) {
    for (long i = 0; i < mib; i++) {
        char *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            /* Address space exhausted: keep what we have. Under a memcg limit the OOM killer
               acts at page-fault time instead, so this is not the expected path. */
            break;
        }
        memset(p, (int)(0x5a ^ (i & 0xff)), MIB);
    }
    sleep_forever();
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--fork-child") != 0)) {
        fprintf(stderr, "usage: alloc <MiB> [--fork-child]\n");
        return 2;
    }
    char *end = NULL;
    long mib = strtol(argv[1], &end, 10);
    if (end == argv[1] || *end != '\0' || mib < 0) {
        fprintf(stderr, "alloc: bad MiB count '%s'\n", argv[1]);
        return 2;
    }
    if (argc == 2)
        allocate(mib);

    pid_t child = fork();
    if (child < 0) {
        perror("alloc: fork");
        return 1;
    }
    if (child == 0)
        allocate(mib);
    printf("%d\n", (int)child);
    fflush(stdout);
    for (;;) {
        int st;
        pid_t r = waitpid(-1, &st, 0);
        if (r < 0 && errno == ECHILD)
            break;
    }
    sleep_forever();
    return 0;
}
"#;

/// FNV-1a, stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const CFLAGS: &[&str] = &["-static", "-O2", "-Wall", "-Werror"];

/// Directory for compiled helpers: `<target>/fathom-tests-progs`, or a per-user directory
/// under the temp dir if the target dir is not writable.
fn progs_dir() -> PathBuf {
    let d = crate::target_dir().join("fathom-tests-progs");
    if std::fs::create_dir_all(&d).is_ok() && is_writable(&d) {
        return d;
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let d = std::env::temp_dir().join(format!("fathom-tests-progs-{uid}"));
    std::fs::create_dir_all(&d).expect("creating helper program dir");
    d
}

fn is_writable(d: &Path) -> bool {
    let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Compiles `src` with gcc into `dir/<name>-<hash>/<name>` unless that file exists (the file
/// itself is named `<name>` so the process's `comm` is exactly `<name>`). Concurrent callers
/// (threads or other test binaries) each compile to a private temp name and rename it into
/// place, so nobody ever sees a half-written binary.
pub fn compile_c(name: &str, src: &str) -> Result<PathBuf> {
    let mut parts: Vec<&[u8]> = vec![src.as_bytes()];
    parts.extend(CFLAGS.iter().map(|f| f.as_bytes()));
    let hash = fnv1a(&parts);
    let dir = progs_dir().join(format!("{name}-{hash:016x}"));
    let out = dir.join(name);
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let tag = crate::unique_suffix();
    let c_file = dir.join(format!(".{name}-{tag}.c"));
    let tmp_out = dir.join(format!(".{name}-{tag}.tmp"));
    std::fs::write(&c_file, src).with_context(|| format!("writing {}", c_file.display()))?;
    let res = Command::new("gcc")
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp_out)
        .arg(&c_file)
        .output();
    let _ = std::fs::remove_file(&c_file);
    let o = res.context("running gcc (apt install gcc)")?;
    if !o.status.success() {
        let _ = std::fs::remove_file(&tmp_out);
        bail!(
            "gcc failed for {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::rename(&tmp_out, &out)
        .with_context(|| format!("renaming {} → {}", tmp_out.display(), out.display()))?;
    Ok(out)
}

/// Path of the static `alloc` helper (see [`ALLOC_C`]), compiled once per process.
pub fn alloc_binary() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| compile_c("alloc", ALLOC_C).unwrap_or_else(|e| panic!("{e:#}")))
        .clone()
}

/// Path of the static busybox (`busybox-static` package), for container root filesystems.
pub fn busybox_binary() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        if p.is_file() {
            return p.to_path_buf();
        }
    }
    panic!("busybox not found: apt install busybox-static");
}

/// Source of `thrash`.
///
/// `thrash <anon MiB> <file> <step ms>`: pins itself to the CPU it starts on, maps `<file>`
/// (a file-backed working set, its cached pages dropped first so that they are charged to this
/// cgroup when read) and, every `<step ms>`, touches one more MiB of anonymous
/// memory (up to `<anon MiB>`) and reads every page of the file. In a memory cgroup whose
/// limit is below anon + file (swap off), the kernel keeps reclaiming the file's pages (which
/// are read back at once) until the anonymous memory alone exceeds the limit and the OOM
/// killer ends it: seconds of memory-cgroup reclaim before the kill. Pinned so that the
/// cgroup's PSI `some` total (aggregated per CPU, weighted by each CPU's non-idle time) is the
/// task's stall wall time. Nothing is printed (usage errors: stderr, exit code 2).
pub const THRASH_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: thrash <anon MiB> <file> <step ms> [<plateau MiB> <plateau s>]\n");
        return 2;
    }
    long anon = atol(argv[1]);
    long step = atol(argv[3]);
    /* Optional: hold the anonymous memory at <plateau MiB> for <plateau s>, touching the file
       all along, before growing on to the kill: a thrash phase of a fixed length (the steps
       alone give one that lasts as long as the file's pages take to read back). */
    long plateau = argc == 6 ? atol(argv[4]) : -1;
    long plateau_s = argc == 6 ? atol(argv[5]) : 0;
    struct timespec plateau_end = {0, 0};
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(sched_getcpu(), &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("thrash: sched_setaffinity");
        return 2;
    }
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) {
        perror("thrash: open");
        return 2;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        fprintf(stderr, "thrash: empty or unreadable file\n");
        return 2;
    }
    /* Pages already cached were charged to whoever wrote the file: write them back and drop
       them, so the working set is read in (and charged) by this cgroup. */
    if (fdatasync(fd) != 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) {
        perror("thrash: dropping the file's cached pages");
        return 2;
    }
    volatile char *f = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (f == MAP_FAILED) {
        perror("thrash: mmap");
        return 2;
    }
    unsigned long sum = 0;
    struct timespec ts = {step / 1000, (step % 1000) * 1000000L};
    for (long i = 0;; i++) {
        if (i == plateau) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (plateau_end.tv_sec == 0)
                plateau_end.tv_sec = now.tv_sec + plateau_s;
            if (now.tv_sec < plateau_end.tv_sec) {
                for (off_t o = 0; o < st.st_size; o += 4096)
                    sum += f[o];
                nanosleep(&ts, NULL);
                i--;
                continue;
            }
        }
        if (i < anon) {
            char *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                break;
            memset(p, 0x5a, MIB);
        }
        for (off_t o = 0; o < st.st_size; o += 4096)
            sum += f[o];
        nanosleep(&ts, NULL);
    }
    return (int)(sum & 1);
}
"#;

/// Path of the static `thrash` helper (see [`THRASH_C`]), compiled once per process.
pub fn thrash_binary() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| compile_c("thrash", THRASH_C).unwrap_or_else(|e| panic!("{e:#}")))
        .clone()
}
