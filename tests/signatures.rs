//! Image signatures under a project's launch policy, through the real
//! binary: keys from `nimbus key create`, signatures from `nimbus image
//! sign`, the policy from `nimbus policy set`, enforced by the server when
//! an instance is created and by the agent when it starts one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{busybox_rootfs_tar_with, Cloud};

const PASSWORD: &str = "e2e password";

fn with_password(cloud: &Cloud, args: &[&str]) -> Output {
    cloud
        .command()
        .env("COSIGN_PASSWORD", PASSWORD)
        .args(args)
        .output()
        .expect("run nimbus")
}

fn ok_with_password(cloud: &Cloud, args: &[&str]) -> String {
    let out = with_password(cloud, args);
    assert!(
        out.status.success(),
        "nimbus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nimbus key create` into `dir/prefix`; the key's fingerprint.
fn create_key(cloud: &Cloud, dir: &Path, prefix: &str) -> String {
    let prefix = dir.join(prefix);
    let out = ok_with_password(
        cloud,
        &[
            "key",
            "create",
            "--output-key-prefix",
            prefix.to_str().expect("utf8"),
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["fingerprint"].as_str().expect("fingerprint").to_string()
}

/// A busybox image whose content differs by one empty directory `marker`,
/// imported as `name`.
fn import_image(cloud: &Cloud, name: &str, marker: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tar = busybox_rootfs_tar_with(dir.path(), &[], &[marker]);
    cloud.ok(&["image", "import", &tar, "--name", name]);
}

fn require_signature_by(cloud: &Cloud, public_key: &str) {
    cloud.ok(&["policy", "set", "--require-signature", "--key", public_key]);
}

fn refused(cloud: &Cloud, name: &str, image: &str) -> String {
    let out = cloud.nimbus(&[
        "instance",
        "run",
        name,
        "--image",
        image,
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert!(
        !out.status.success(),
        "instance {name} of image {image} was created under the policy"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_policy_admits_signed_images_and_refuses_the_rest_with_reasons() {
    if !common::is_root("containers") {
        return;
    }
    let cloud = Cloud::start();
    let keys = tempfile::tempdir().expect("temp dir");
    let ops = create_key(&cloud, keys.path(), "ops");
    let other = create_key(&cloud, keys.path(), "other");
    let mode = std::fs::metadata(keys.path().join("ops.key"))
        .expect("ops.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let private = std::fs::read_to_string(keys.path().join("ops.key")).expect("key");
    assert!(private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    let again = with_password(
        &cloud,
        &[
            "key",
            "create",
            "--output-key-prefix",
            keys.path().join("ops").to_str().expect("utf8"),
        ],
    );
    assert!(!again.status.success(), "a key was overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    import_image(&cloud, "app", "app");
    import_image(&cloud, "unsigned", "unsigned");
    import_image(&cloud, "foreign", "foreign");
    let key = |k: &str| keys.path().join(k).to_string_lossy().into_owned();
    ok_with_password(&cloud, &["image", "sign", "app", "--key", &key("ops.key")]);
    ok_with_password(
        &cloud,
        &["image", "sign", "foreign", "--key", &key("other.key")],
    );
    // A wrong password changes nothing and says what to do.
    let wrong = cloud
        .command()
        .env("COSIGN_PASSWORD", "not it")
        .args(["image", "sign", "unsigned", "--key", &key("ops.key")])
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("COSIGN_PASSWORD"));

    // Bad input to the policy is refused and changes nothing.
    let bad = cloud.nimbus(&[
        "policy",
        "set",
        "--require-signature",
        "--key",
        &key("ops.key"),
    ]);
    assert!(
        !bad.status.success(),
        "a private key was taken as a public key"
    );
    let bad = cloud.nimbus(&["policy", "set", "--require-signature"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--key"));
    let policy = cloud.json(&["policy", "get"]).expect("policy");
    assert!(policy["spec"]["require_signature"].is_null(), "{policy}");

    require_signature_by(&cloud, &key("ops.pub"));
    let policy = cloud.json(&["policy", "get"]).expect("policy");
    assert_eq!(
        policy["spec"]["keys"][0]["fingerprint"],
        ops.as_str(),
        "{policy}"
    );

    // Signed by the trusted key: it launches.
    cloud.ok(&[
        "instance",
        "run",
        "signed",
        "--image",
        "app",
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    cloud.wait_phase("signed", &["running"], Duration::from_secs(60));

    let unsigned = refused(&cloud, "u", "unsigned");
    assert!(unsigned.contains("has no signature"), "{unsigned}");
    assert!(
        unsigned.contains(&ops),
        "names the required key: {unsigned}"
    );

    let foreign = refused(&cloud, "f", "foreign");
    assert!(foreign.contains("signed only by another key"), "{foreign}");
    assert!(foreign.contains(&other), "names the signer: {foreign}");
    assert!(foreign.contains(&ops), "names the required key: {foreign}");

    // The name is re-pointed at another image after signing.
    cloud.ok(&["instance", "rm", "signed", "--force"]);
    cloud.ok(&["image", "rm", "app"]);
    import_image(&cloud, "app", "swapped");
    let moved = refused(&cloud, "m", "app");
    assert!(moved.contains("re-imported after signing"), "{moved}");
    assert!(moved.contains(&ops), "{moved}");
    for name in ["u", "f", "m"] {
        assert!(!cloud.nimbus(&["instance", "get", name]).status.success());
    }

    // The agent checks again at start: an instance created while the
    // policy allowed it, and placed only after the policy forbids it, does
    // not start. The host is cordoned so the instance waits unplaced.
    cloud.ok(&["policy", "set", "--no-require-signature"]);
    cloud.ok(&["host", "cordon", &cloud.host]);
    cloud.ok(&[
        "instance",
        "run",
        "late",
        "--image",
        "unsigned",
        "--no-wait",
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(cloud.instance("late")["status"]["phase"], "pending");
    cloud.ok(&["policy", "set", "--require-signature"]);
    cloud.ok(&["host", "uncordon", &cloud.host]);
    let reason = common::wait_until_or(
        Duration::from_secs(60),
        "the agent to refuse to start instance late",
        || {
            let v = cloud.instance("late");
            let reason = v["status"]["reason"].as_str()?.to_string();
            reason
                .contains("may not start on this host")
                .then_some(reason)
        },
        || format!("{}", cloud.instance("late")),
    );
    assert!(reason.contains("has no signature"), "{reason}");
    let phase = cloud.instance("late")["status"]["phase"].clone();
    assert_ne!(phase, "running", "the refused instance runs");
    cloud.ok(&["instance", "rm", "late", "--force"]);
}

#[test]
fn another_projects_token_cannot_see_sign_or_set_the_policy() {
    let cloud = Cloud::start();
    let keys = tempfile::tempdir().expect("temp dir");
    create_key(&cloud, keys.path(), "ops");
    create_key(&cloud, keys.path(), "rival");
    let dir = tempfile::tempdir().expect("temp dir");
    let tar = common::tiny_rootfs_tar(dir.path());
    cloud.ok(&["image", "import", &tar, "--name", "app"]);
    let key = |k: &str| keys.path().join(k).to_string_lossy().into_owned();
    require_signature_by(&cloud, &key("ops.pub"));

    cloud.ok(&["user", "create", "rival"]);
    cloud.ok(&["project", "create", "rivals"]);
    cloud.ok(&["role", "grant", "rival", "admin", "--project", "rivals"]);
    let token = cloud
        .json(&["token", "create", "--user", "rival"])
        .expect("token");
    let token = token["secret"].as_str().expect("secret");
    let as_rival = |args: &[&str]| {
        cloud
            .command()
            .env("NIMBUS_TOKEN", token)
            .env("COSIGN_PASSWORD", PASSWORD)
            .args(args)
            .args(["--project", "default"])
            .output()
            .expect("run")
    };
    for args in [
        vec!["policy", "get"],
        vec!["policy", "set", "--no-require-signature"],
        vec!["image", "sign", "app", "--key", &key("rival.key")],
    ] {
        let out = as_rival(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{args:?} worked for another project's token"
        );
        assert!(err.contains("not found"), "{args:?}: {err}");
    }
    let policy = cloud.json(&["policy", "get"]).expect("policy");
    assert_eq!(policy["spec"]["require_signature"], true, "{policy}");
    assert_eq!(policy["spec"]["keys"].as_array().map(Vec::len), Some(1));
}
