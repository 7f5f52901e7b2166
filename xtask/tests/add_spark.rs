//! `cargo xtask add-spark` against the sandbox's mirror: real gpg, real
//! KEYS and .asc files signed by the sandbox's own key, served on loopback.
//! It adds a release it can verify, and refuses every other case with one
//! line, leaving the matrix byte for byte as it was.

use std::{fs, path::Path};

use xshell::Shell;
use xtask::{
    local::{self, mirror, signing},
    project,
};

mod common;
use common::{scratch, text, xtask};

/// A mirror holding a release `spark-9.9.9`, laid out as Apache's: a small
/// tarball (add-spark checks signatures and checksums, not contents), its
/// .sha512, and its .asc by the sandbox key, with the mirror's KEYS.
fn mirror_with_release(sh: &Shell, root: &Path) -> std::path::PathBuf {
    let tarball = mirror::tarball_path(root, "9.9.9", "hadoop3");
    let release = tarball.parent().unwrap();
    fs::create_dir_all(release.join("spark-9.9.9-bin-hadoop3/bin")).unwrap();
    fs::write(release.join("spark-9.9.9-bin-hadoop3/RELEASE"), "Spark 9.9.9 (add-spark test)\n").unwrap();
    let top = "spark-9.9.9-bin-hadoop3";
    xshell::cmd!(sh, "tar -czf {tarball} -C {release} {top}").run().unwrap();
    let sha512 = xshell::cmd!(sh, "sha512sum {tarball}").read().unwrap();
    let sha512 = sha512.split_whitespace().next().unwrap();
    fs::write(format!("{}.sha512", tarball.display()), format!("{sha512}  {top}.tgz\n")).unwrap();
    signing::sign(sh, root, &tarball).unwrap();
    tarball
}

#[test]
fn add_spark_adds_what_it_verifies_and_changes_nothing_otherwise() {
    let sh = Shell::new().unwrap();
    let dir = scratch("add-spark");
    let root = dir.join("mirror");
    let tarball = mirror_with_release(&sh, &root);
    let venv = local::ensure_venv(&sh).unwrap();
    let server = mirror::MirrorServer::start(&venv, &root).unwrap();
    let matrix = dir.join("matrix.json");
    let original = fs::read(project::matrix_file()).unwrap();
    let add = |version: &str| {
        fs::write(&matrix, &original).unwrap();
        let output = xtask(&["add-spark", version, "--mirror", &server.url, "--matrix", matrix.to_str().unwrap()])
            .output()
            .unwrap();
        (output.status.success(), text(&output), fs::read(&matrix).unwrap())
    };

    let (ok, said, after) = add("9.9.9");
    assert!(ok, "{said}");
    assert!(said.starts_with("added spark-9.9.9 in ") && said.contains("/matrix.json: SHA-512 "), "{said}");
    assert!(said.contains(&format!("signed by {}", signing::SANDBOX_SIGNER)), "{said}");
    let added: serde_json::Value = serde_json::from_slice(&after).unwrap();
    let spark = &added["images"].as_array().unwrap().iter().find(|i| i["name"] == "spark-9.9.9").unwrap()["spark"];
    assert_eq!(spark["sha512"], mirror::published_sha512(&tarball).unwrap());
    assert_eq!(spark["verified"]["keys"], format!("{}/KEYS", server.url));
    assert_eq!(spark["java"], serde_json::json!([17, 21]));
    let validated = xtask(&["validate", "--matrix", matrix.to_str().unwrap()]).output().unwrap();
    assert!(!text(&validated).contains("matrix.json:"), "the new matrix validates: {}", text(&validated));

    // Each refusal: one line, and the matrix unchanged, byte for byte.
    let refused = |version: &str, expect: &str| {
        let (ok, said, after) = add(version);
        assert!(!ok, "{version}: {said}");
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.contains(expect), "expected {expect:?}: {said}");
        assert!(after == original, "{version}: the matrix changed");
    };
    refused("9.9.8", "no such release: ");

    let sha_file = format!("{}.sha512", tarball.display());
    let good_sha = fs::read_to_string(&sha_file).unwrap();
    fs::write(&sha_file, good_sha.replacen(&good_sha[..8], "00000000", 1)).unwrap();
    refused("9.9.9", "the checksum file was altered or belongs to another file");
    fs::write(&sha_file, &good_sha).unwrap();

    // A signature by the sandbox key, but over another file (the .sha512).
    let asc = format!("{}.asc", tarball.display());
    let good_asc = fs::read(&asc).unwrap();
    fs::remove_file(format!("{sha_file}.asc")).ok();
    signing::sign(&sh, &root, Path::new(&sha_file)).unwrap();
    fs::rename(format!("{sha_file}.asc"), &asc).unwrap();
    refused("9.9.9", "bad signature: ");
    fs::write(&asc, &good_asc).unwrap();

    // KEYS that does not hold the sandbox key.
    let keys = root.join("KEYS");
    let good_keys = fs::read(&keys).unwrap();
    let other = signing::GpgHome::create(&sh, dir.join("other-gnupg")).unwrap();
    let made = other.gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "someone else <else@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    assert!(made.unwrap().status.success());
    fs::write(&keys, other.gpg(&["--armor", "--export"]).unwrap().stdout).unwrap();
    refused("9.9.9", "which is not in");
    fs::write(&keys, good_keys).unwrap();
    drop(other);

    let (ok, said, _) = add("9.9.9");
    assert!(ok, "restored, it verifies again: {said}");
}
