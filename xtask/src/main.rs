//! fathom's developer tasks, run as `cargo xtask <command>` (alias in .cargo/config.toml).
//! Every command first runs `setup`, which is quick when the machine is already set up.

mod bench;
mod cmd;
mod setup;
mod vm;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "fathom's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (runs before every command; needs root).
    ///
    /// Nightly toolchain with rust-src, bpf-linker 0.13.0 built against nightly's LLVM, the
    /// Debian packages the tests use, tracefs and bpffs mounts.
    Setup,
    /// `cargo build -p probe-user` (builds the eBPF programs too).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build in release mode, then run `fathom capture [ARGS]`.
    Run {
        /// Appended to `fathom capture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build fathom, check deploy/, then run `cargo test --workspace [ARGS]` with FATHOM_BIN
    /// set.
    ///
    /// Flags for the test binaries go after a second `--`: `cargo xtask test -- -- --nocapture`.
    Test {
        /// Passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace.
    Lint,
    /// Benchmarks: kernel cost vs bpftrace, flood accounting, footprint, scrape latency,
    /// startup (results in target/bench/results.json).
    Bench,
    /// Boot other Linux kernels (Debian's) under qemu and smoke-test fathom on each: programs
    /// attached, an OOM kill and NO_SOCKET drops as events (results in target/vm/results.json).
    Vm(vm::Args),
    /// Build fathom in release mode and write a container image of it: a docker-archive
    /// tarball for `docker load` / `ctr image import` (no registry, no docker needed).
    ///
    /// The image holds /fathom and the shared libraries `ldd` reports for it; entrypoint
    /// `/fathom`, command `serve`, runs as root (fathom needs CAP_BPF and friends).
    Image {
        /// Image reference written into the archive (`:latest` when it has no tag).
        #[arg(long, default_value_t = xtask::image::default_tag(env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// The tarball to write [default: <target>/image/fathom-<version>.tar].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the process exit code.
fn run(task: Task) -> Result<u8> {
    let root = workspace_root();
    // `run`, `build`, `lint` and `image` only need what building and running fathom needs;
    // the tests, the bench and the qemu runs need their daemons and tools too.
    let need = match task {
        Task::Build { .. } | Task::Run { .. } | Task::Lint | Task::Image { .. } => setup::Need::Run,
        _ => setup::Need::Everything,
    };
    let setup_actions = setup::run(need)?;
    match task {
        Task::Setup => {
            if setup_actions == 0 {
                println!("setup: ok");
            }
            Ok(0)
        }
        Task::Build { release } => build(&root, release),
        Task::Run { args } => {
            let code = build(&root, true)?;
            if code != 0 {
                return Ok(code);
            }
            let bin = target_dir(&root).join("release/fathom");
            let err = Command::new(&bin).arg("capture").args(args).exec();
            bail!("cannot run {}: {err}", bin.display())
        }
        Task::Test { args } => {
            let full_suite = args.is_empty();
            let code = build(&root, false)?;
            if code != 0 {
                return Ok(code);
            }
            // The deployment files are checked against the binary's real flags and metric
            // families (offline: kubernetes-validate schemas, promtool).
            let deploy = cmd::status(
                Command::new("bash")
                    .arg(root.join("deploy/check.sh"))
                    .env("FATHOM_BIN", target_dir(&root).join("debug/fathom"))
                    .current_dir(&root),
            )?;
            if !deploy.success() {
                eprintln!("xtask: deploy/check.sh failed");
                return Ok(cmd::exit_code(deploy));
            }
            let mut test = cmd::cargo();
            test.args(["test", "--workspace", "--no-fail-fast"])
                .args(&args);
            // The whole suite runs each binary's tests one at a time: tests of one binary
            // share the machine's fragment queues, CPUs and daemons, and the in-kernel
            // per-CPU attribution of queued fragments is only exact without interleaving
            // from other tests.
            if full_suite {
                test.args(["--", "--test-threads=1"]);
            }
            test.env("FATHOM_BIN", target_dir(&root).join("debug/fathom"))
                .current_dir(&root);
            let (st, mut totals) = run_counting_tests(&mut test)?;
            let mut code = cmd::exit_code(st);
            // The whole suite also boots other kernels under qemu (one test per kernel).
            if full_suite {
                let (passed, failed) = vm_smoke(&root);
                totals.passed += passed;
                totals.failed += failed;
                if failed > 0 && code == 0 {
                    code = 1;
                }
            }
            // One closing line for the whole suite (cargo prints one per test binary, the
            // last often a doc-test run of 0).
            println!(
                "tests: {} passed, {} failed, {} skipped",
                totals.passed, totals.failed, totals.ignored
            );
            Ok(code)
        }
        Task::Lint => lint(&root),
        Task::Bench => bench::run(&root),
        Task::Vm(args) => vm::run(&root, &args),
        Task::Image { tag, out } => image(&root, &tag, out),
    }
}

/// `cargo xtask vm` with its default kernels, as part of `cargo xtask test`: (kernels that
/// passed, kernels that failed); a run that could not even start counts as one failure.
fn vm_smoke(root: &Path) -> (u64, u64) {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        vm: vm::Args,
    }
    let args = Defaults::parse_from(["vm"]).vm;
    println!(
        "xtask: fathom on other kernels under qemu: {}",
        args.kernel.join(", ")
    );
    if let Err(e) = vm::run(root, &args) {
        eprintln!("xtask: cargo xtask vm failed: {e:#}");
        return (0, 1);
    }
    let results = target_dir(root).join("vm/results.json");
    let parsed = std::fs::read(&results)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(kernels) = parsed.as_ref().and_then(|v| v["kernels"].as_array()) else {
        eprintln!("xtask: no kernel results in {}", results.display());
        return (0, 1);
    };
    let passed = kernels.iter().filter(|k| k["ok"] == true).count() as u64;
    (passed, kernels.len() as u64 - passed)
}

/// `cargo xtask image`: release build, then the image tarball of target/release/fathom.
fn image(root: &Path, tag: &str, out: Option<PathBuf>) -> Result<u8> {
    use xtask::image;
    // Checked before the build, so a typo fails fast.
    let tag = image::normalize_tag(tag)?;
    let code = build(root, true)?;
    if code != 0 {
        return Ok(code);
    }
    let version = env!("CARGO_PKG_VERSION");
    let out = out.unwrap_or_else(|| target_dir(root).join(format!("image/fathom-{version}.tar")));
    let (labels, created) = image::checkout_metadata(root, version);
    let spec = image::ImageSpec {
        binary: target_dir(root).join("release/fathom"),
        tag,
        labels,
        created,
    };
    let img = image::write(&spec, &out)?;
    println!(
        "image: {} ({:.1} MiB, id {})",
        img.path.display(),
        img.size as f64 / f64::from(1 << 20),
        img.id
    );
    println!("image: tag {}", img.tag);
    println!("image: files /{}", img.files.join(", /"));
    println!(
        "image: load it with `docker load -i {0}` or `ctr -n k8s.io image import {0}`",
        img.path.display()
    );
    Ok(0)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative to the root, where cargo runs) or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn build(root: &Path, release: bool) -> Result<u8> {
    let mut cargo = cmd::cargo();
    cargo.args(["build", "-p", "probe-user"]).current_dir(root);
    if release {
        cargo.arg("--release");
    }
    Ok(cmd::exit_code(cmd::status(&mut cargo)?))
}

/// Runs every check, then fails if any did. `cargo fmt --all` also covers probe-ebpf, which is
/// outside the workspace but a path build-dependency of probe-user.
fn lint(root: &Path) -> Result<u8> {
    let checks: [(&str, &[&str]); 2] = [
        ("cargo fmt", &["fmt", "--all", "--", "--check"]),
        (
            "cargo clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (name, args) in checks {
        if !cmd::status(cmd::cargo().args(args).current_dir(root))?.success() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn test_args(argv: &[&str]) -> Vec<OsString> {
        match Cli::try_parse_from(argv).unwrap().command {
            Task::Test { args } => args,
            _ => panic!("not a test command"),
        }
    }

    #[test]
    fn extra_args_reach_cargo_test() {
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(test_args(&["xtask", "test", "--", "oom"]), ["oom"]);
        assert_eq!(
            test_args(&["xtask", "test", "--", "oom", "--", "--nocapture"]),
            ["oom", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "--", "--test-threads=1"]),
            ["--", "--test-threads=1"]
        );
    }

    #[test]
    fn image_defaults_to_the_crate_version() {
        let Task::Image { tag, out } = Cli::try_parse_from(["xtask", "image"]).unwrap().command
        else {
            panic!("not an image command")
        };
        assert_eq!(tag, format!("fathom:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(out, None);
        let Task::Image { tag, out } =
            Cli::try_parse_from(["xtask", "image", "--tag", "r.example/f:1", "--out", "x.tar"])
                .unwrap()
                .command
        else {
            panic!("not an image command")
        };
        assert_eq!(
            (tag.as_str(), out),
            ("r.example/f:1", Some(PathBuf::from("x.tar")))
        );
    }

    #[test]
    fn run_args_follow_capture() {
        let Task::Run { args } = Cli::try_parse_from(["xtask", "run", "--", "--json", "-v"])
            .unwrap()
            .command
        else {
            panic!("not a run command")
        };
        assert_eq!(args, ["--json", "-v"]);
    }
}

/// Sums of the `test result:` lines of a cargo test run.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    /// Adds one libtest summary line (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cmd`, echoing its stdout line by line while summing the test results in it.
fn run_counting_tests(cmd: &mut Command) -> Result<(std::process::ExitStatus, TestTotals)> {
    use std::io::{BufRead as _, Write as _};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start `{}`: {e}", cmd::describe(cmd)))?;
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        totals.add_line(&line);
        let _ = writeln!(out, "{line}");
    }
    drop(out);
    Ok((child.wait()?, totals))
}

#[cfg(test)]
mod totals_tests {
    use super::TestTotals;

    #[test]
    fn sums_libtest_summaries() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s");
        t.add_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            TestTotals {
                passed: 4,
                failed: 2,
                ignored: 1
            }
        );
    }
}
