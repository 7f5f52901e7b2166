//! Issue 18's reproductions of data loss and hangs around the ami-list tree,
//! each written as the reproduction and asserting the safe outcome: the
//! checked-in tree byte-identical, nothing launched for a bad `--ami-list`,
//! no AMI deregistered on a partial view, files untouched by a failed
//! recording, one run refused by the lock, and no hang.
//!
//! Every run goes to a moto server on loopback started by its test, and
//! nothing here writes the checked-in `ami-list/`: a refusal is the point.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use xtask::{local, lock, project};

mod common;
use common::{emulator_shell, path_with_venv_aws, scratch, text, xtask};

/// Longer than any of these runs needs by far; a hang fails the test.
const HANG: Duration = Duration::from_secs(60);

/// Runs `command` to the end, or kills it after `limit` and fails. Both
/// pipes are drained as it runs, so a flood of output cannot stall it.
fn run_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the xtask binary");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let clock = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if clock.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} hung: killed after {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Every file under the checked-in tree, with its bytes.
fn checked_in_bytes() -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&project::checked_in_ami_list(), &mut out);
    out
}

/// Instances ever launched in us-east-1, whatever their state now.
fn launches(emulator: &local::Emulator) -> usize {
    emulator.aws().instance_states(&emulator_shell(), "us-east-1").unwrap().values().sum()
}

/// The factory's images in us-east-1.
fn images(emulator: &local::Emulator) -> Vec<String> {
    let mut ids: Vec<String> = emulator
        .aws()
        .factory_images(&emulator_shell(), "us-east-1")
        .unwrap()
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    ids.sort();
    ids
}

/// One API-only build of `base`/hvm in us-east-1 (copied to the seed's other regions).
fn build(endpoint: &str, extra: &[&str]) -> Command {
    let mut command =
        xtask(&["build-amis", "--no-provision", "--preset", "seed-2014", "--image", "base", "--virt", "hvm"]);
    command.args(["--endpoint", endpoint]).args(extra);
    command
}

fn refused(output: &Output, expected: &[&str]) {
    let said = text(output);
    assert!(!output.status.success(), "not refused:\n{said}");
    for part in expected {
        assert!(said.contains(part), "expected {part:?} in:\n{said}");
    }
}

/// No terminal escape, bell or carriage return reaches the terminal.
fn no_raw_control_bytes(output: &Output) {
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let raw: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(raw.is_empty(), "raw control characters {raw:?} in {name}:\n{}", text.escape_debug());
    }
}

#[test]
fn repro_1_emulator_ids_never_reach_the_checked_in_tree_however_spelled() {
    let before = checked_in_bytes();
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let root = project::root();
    let checked_in = project::checked_in_ami_list();
    // Each child sees the checked-in tree read-only, so even a broken guard
    // cannot write it. Where that cannot be arranged, the runs aim at a port
    // nobody serves: a broken guard then gets no AMI to record.
    let namespaces = namespaces_allowed();
    let port = if namespaces { emulator.port } else { 9 };
    let guarded = |command: Command| with_read_only(&checked_in, &command).unwrap_or(command);
    let spellings =
        ["0.0.0.0", "LOCALHOST", "localhost.", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001", "ip6-localhost"];
    for host in spellings {
        let endpoint = format!("http://{host}:{port}");
        for tree in [checked_in.clone(), checked_in.join("sub"), root.join("xtask/../ami-list/not/yet")] {
            let clock = Instant::now();
            let mut command = build(&endpoint, &["--region", "us-east-1"]);
            command.arg("--ami-list").arg(&tree);
            let output = run_within(&mut guarded(command), HANG);
            refused(&output, &["refusing to pair an emulator with the checked-in ami-list"]);
            assert!(clock.elapsed() < Duration::from_secs(10), "{endpoint} {tree:?}: {:?}", clock.elapsed());
        }
    }
    // The sandbox too, with relative spellings from the repository root.
    if namespaces {
        for tree in ["ami-list/sub", "./ami-list", "./ami-list/not-yet/deeper", "xtask/../ami-list"] {
            let mut command = xtask(&["build-amis", "--local", "--no-provision", "--ami-list", tree]);
            command.current_dir(&root);
            let output = run_within(&mut guarded(command), HANG);
            refused(&output, &["refusing to pair an emulator with the checked-in ami-list"]);
        }
    }
    assert_eq!(launches(&emulator), 0, "a refused run launched an instance");
    assert_eq!(checked_in_bytes(), before, "the checked-in ami-list changed");
    if !namespaces {
        return;
    }

    // The reproduction itself, with no --ami-list: the IDs go under target/.
    let target = scratch("fc-repro-1").join("target");
    let mut command = build(&format!("http://0.0.0.0:{port}"), &["--region", "us-east-1"]);
    command.env("CARGO_TARGET_DIR", &target).env("PATH", path_with_venv_aws(&emulator));
    let output = run_within(&mut guarded(command), Duration::from_secs(300));
    assert!(output.status.success(), "{}", text(&output));
    let recorded = fs::read_to_string(target.join("endpoint/ami-list/base/us-east-1/hvm")).unwrap();
    assert!(recorded.starts_with("ami-"), "{recorded:?}");
    assert_eq!(checked_in_bytes(), before, "the checked-in ami-list changed");
}

#[test]
fn an_endpoint_without_a_host_is_refused_before_anything_starts() {
    for url in ["http://", "https://", "http://:5000"] {
        let clock = Instant::now();
        let output = run_within(&mut xtask(&["build-amis", "--no-provision", "--endpoint", url]), HANG);
        refused(&output, &["names no host", "write it as http://127.0.0.1:5000"]);
        assert_eq!(output.status.code(), Some(2), "a usage error, from the parser");
        assert!(clock.elapsed() < Duration::from_secs(5), "{url}: {:?}", clock.elapsed());
    }
}

/// Whether this process may make mount namespaces (root, usually).
fn namespaces_allowed() -> bool {
    Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success())
}

/// `command` with `dir` read-only, in a mount namespace of its own that dies
/// with it; None where namespaces are not allowed.
fn with_read_only(dir: &Path, command: &Command) -> Option<Command> {
    if !namespaces_allowed() {
        eprintln!("cannot make {} read-only here: `unshare -m` is not allowed", dir.display());
        return None;
    }
    let mut wrapped = Command::new("unshare");
    wrapped.args(["-m", "sh", "-c", r#"mount --bind -o ro "$0" "$0" && exec "$@""#]).arg(dir);
    wrapped.arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(cwd) = command.get_current_dir() {
        wrapped.current_dir(cwd);
    }
    Some(wrapped)
}

#[test]
fn repro_8_a_bad_ami_list_is_refused_before_anything_is_launched() {
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("fc-repro-8");
    fs::write(dir.join("file"), "not a tree").unwrap();
    symlink(dir.join("loop"), dir.join("loop")).unwrap();
    fs::create_dir_all(dir.join("leaky")).unwrap();
    symlink(std::env::temp_dir(), dir.join("leaky/base")).unwrap();
    fs::create_dir_all(dir.join("read-only")).unwrap();
    let proc_lock_existed = Path::new("/.proc.lock").exists();

    let writable = "name a writable directory";
    let cases = [
        (dir.join("file"), ["is not a directory", writable]),
        (dir.join("loop"), ["symlink loop", "name another path"]),
        (PathBuf::from("/proc"), ["is not writable", writable]),
        (dir.join("leaky"), ["leads out of the tree", writable]),
    ];
    for (tree, expected) in &cases {
        let mut command = build(&endpoint, &[]);
        let output = run_within(command.arg("--ami-list").arg(tree), HANG);
        refused(&output, &[expected[0], expected[1], &tree.display().to_string()]);
    }
    let mut command = build(&endpoint, &[]);
    command.arg("--ami-list").arg(dir.join("read-only/ami-list"));
    if let Some(mut command) = with_read_only(&dir.join("read-only"), &command) {
        let output = run_within(&mut command, HANG);
        refused(&output, &["cannot be created", "name a writable directory"]);
    }
    assert_eq!(launches(&emulator), 0, "a refused run launched an instance");
    assert!(proc_lock_existed || !Path::new("/.proc.lock").exists(), "a lock was made beside /proc");
}

#[test]
fn repro_7_a_symlink_to_a_locked_tree_is_refused_by_the_same_lock() {
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let dir = scratch("fc-repro-7");
    let tree = dir.join("x");
    fs::create_dir_all(&tree).unwrap();
    symlink(&tree, dir.join("x-alias")).unwrap();
    let held = lock::acquire(&tree, "build-amis").unwrap();
    assert!(held.path.starts_with(project::target_dir().join("locks")), "{}", held.path.display());

    for alias in [dir.join("x-alias"), dir.join("x-alias/../x/.")] {
        let mut command = build(&emulator.endpoint(), &[]);
        let output = run_within(command.arg("--ami-list").arg(&alias), HANG);
        refused(&output, &[&format!("is in use by `build-amis` (pid {}", std::process::id())]);
    }
    assert_eq!(launches(&emulator), 0, "the refused run launched an instance");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no lock file beside the tree");
    drop(held);
}

#[test]
fn repro_2_a_dangling_symlink_in_the_tree_stops_clean_old_amis_from_deleting_anything() {
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("fc-repro-2");
    let (tree, newer) = (dir.join("ami-list"), dir.join("newer"));
    // Two runs: the tree records the first, so only the tree protects it.
    for into in [&tree, &newer] {
        let mut command = xtask(&["build-amis", "--no-provision", "--preset", "seed-2014", "--region", "us-east-1"]);
        command.args(["--endpoint", &endpoint]).arg("--ami-list").arg(into);
        let output = run_within(&mut command, Duration::from_secs(300));
        assert!(output.status.success(), "{}", text(&output));
    }
    let before = images(&emulator);
    assert_eq!(before.len(), 8, "{before:?}");
    fs::rename(tree.join("base"), dir.join("base-moved")).unwrap();
    symlink(dir.join("nowhere"), tree.join("base")).unwrap();

    let clean = |extra: &[&str]| {
        let mut command = xtask(&["clean-old-amis", "--endpoint", &endpoint, "--region", "us-east-1"]);
        command.args(["--keep", "1", "--min-age", "0s"]).arg("--ami-list").arg(&tree).args(extra);
        run_within(&mut command, HANG)
    };
    let output = clean(&["--yes"]);
    refused(&output, &["base: a dangling symlink", "nothing is deleted"]);
    no_raw_control_bytes(&output);
    assert_eq!(images(&emulator), before, "an AMI was deregistered");
    // Repaired, the same cleanup keeps every AMI the tree records.
    fs::remove_file(tree.join("base")).unwrap();
    fs::rename(dir.join("base-moved"), tree.join("base")).unwrap();
    let output = clean(&["--yes"]);
    assert!(output.status.success(), "{}", text(&output));
    let recorded: Vec<String> = ["base", "spark-3.5.3"]
        .iter()
        .flat_map(|image| ["hvm", "pv"].map(|virt| tree.join(image).join("us-east-1").join(virt)))
        .map(|cell| fs::read_to_string(cell).unwrap().trim().to_string())
        .collect();
    let after = images(&emulator);
    assert!(recorded.iter().all(|id| after.contains(id)), "a recorded AMI went: {recorded:?} {after:?}");
}

/// A tree holding one of everything that used to hang or flood a reader.
fn hostile_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("ami-list");
    let region = tree.join("base/us-east-1");
    fs::create_dir_all(&region).unwrap();
    fs::write(region.join("hvm"), b"\x1b]0;owned\x07\x1b[2J\x1b[31mami-1234abcd\r\n").unwrap();
    let big = fs::File::create(region.join("pv")).unwrap();
    big.set_len(100 << 20).unwrap();
    nix::unistd::mkfifo(&region.join("hvm-arm64"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::write(region.join("bell\x07name"), "ami-1234abcd\n").unwrap();
    tree
}

#[test]
fn repro_9_fifos_proc_huge_and_binary_files_never_hang_or_reach_the_terminal() {
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let dir = scratch("fc-repro-9");
    let tree = hostile_tree(&dir);
    let tree_arg = tree.to_str().unwrap();

    let output = run_within(&mut xtask(&["validate", "--ami-list", "/proc"]), HANG);
    refused(&output, &["/proc/"]);
    no_raw_control_bytes(&output);

    let output = run_within(&mut xtask(&["validate", "--ami-list", tree_arg]), HANG);
    refused(&output, &["hvm-arm64:1: a FIFO", "pv:1: too large (104857600 bytes)", "bell\\u{7}name"]);
    assert!(text(&output).contains(r"`\u{1b}]0;owned\u{7}"), "{}", text(&output));
    no_raw_control_bytes(&output);
    assert!(output.stdout.len() + output.stderr.len() < 64 << 10, "the output is flooded");

    let mut command = xtask(&["clean-old-amis", "--yes", "--endpoint", &emulator.endpoint(), "--region", "us-east-1"]);
    let output = run_within(command.args(["--ami-list", tree_arg]), HANG);
    refused(&output, &["nothing is deleted while part of ami-list cannot be read"]);
    no_raw_control_bytes(&output);
    // The FIFO alone, without the other hazards in front of it.
    fs::remove_file(tree.join("base/us-east-1/pv")).unwrap();
    fs::remove_file(tree.join("base/us-east-1/bell\x07name")).unwrap();
    fs::write(tree.join("base/us-east-1/hvm"), "ami-1234abcd\n").unwrap();
    let mut command = xtask(&["clean-old-amis", "--endpoint", &emulator.endpoint(), "--region", "us-east-1"]);
    let output = run_within(command.args(["--ami-list", tree_arg]), HANG);
    refused(&output, &["base/us-east-1/hvm-arm64: a FIFO"]);
}

#[test]
fn validate_of_a_missing_tree_is_an_error_not_ok() {
    let missing = scratch("fc-missing").join("no-such-tree");
    let output = run_within(&mut xtask(&["validate", "--ami-list", missing.to_str().unwrap()]), HANG);
    refused(&output, &["does not exist"]);
    assert!(!text(&output).contains(": ok"), "{}", text(&output));
}

#[test]
fn repro_6_a_failed_recording_changes_no_file_and_leaves_no_temporary_file() {
    let emulator = local::Emulator::start(&emulator_shell()).unwrap();
    let endpoint = emulator.endpoint();
    let tree = scratch("fc-repro-6").join("ami-list");
    let tree_arg = tree.to_str().unwrap();
    let output = run_within(&mut build(&endpoint, &["--ami-list", tree_arg, "--json"]), Duration::from_secs(300));
    assert!(output.status.success(), "{}", text(&output));
    let cells: Vec<PathBuf> = common::SEED_REGIONS.iter().map(|r| tree.join("base").join(r).join("hvm")).collect();
    let before: Vec<Vec<u8>> = cells.iter().map(|c| fs::read(c).unwrap()).collect();
    // One cell is a directory: the build cannot record it.
    let blocked = tree.join("base/us-west-2/hvm");
    fs::remove_file(&blocked).unwrap();
    fs::create_dir(&blocked).unwrap();

    let output = run_within(&mut build(&endpoint, &["--ami-list", tree_arg, "--json"]), Duration::from_secs(300));
    assert!(!output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let result = &report["builds"][0];
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["recorded"], serde_json::json!([]), "{result}");
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("us-west-2/hvm is a directory") && error.contains("no ami-list file was changed"),
        "{error}"
    );
    for (cell, bytes) in cells.iter().zip(&before) {
        if cell != &blocked {
            assert_eq!(&fs::read(cell).unwrap(), bytes, "{} changed", cell.display());
        }
    }
    let mut leftovers = Vec::new();
    for region in common::SEED_REGIONS {
        for entry in fs::read_dir(tree.join("base").join(region)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.contains(".tmp-") {
                leftovers.push(format!("{region}/{name}"));
            }
        }
    }
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
