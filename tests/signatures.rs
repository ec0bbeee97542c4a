//! Image signatures under a project's launch policy, through the real
//! binary: keys from `nimbus key create`, signatures from `nimbus image
//! sign` or pushed to the registry as cosign pushes them (the tag
//! `sha256-<hex>.sig`, read back with skopeo), the policy from `nimbus
//! policy set`, enforced by the server when an instance is created and by
//! the agent when it starts one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::registry::{
    cert_dir, curl, member, oci_archive, push_blob, put_manifest, sha256_hex, skopeo_ok,
};
use common::{busybox_rootfs_tar_with, Cloud};
use nimbus_sign::{KeyPair, SignatureManifest, SignaturePair};
use serde_json::Value;

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

fn image_digest(cloud: &Cloud, name: &str, project: &str) -> String {
    let image = cloud
        .json(&["image", "get", name, "--project", project])
        .expect("image get");
    image["status"]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// `skopeo list-tags` lists the `.sig` tag of `digest` in `repository`,
/// and its manifest carries the simple-signing layer with cosign's
/// signature annotation.
fn assert_signature_tag_in_registry(cloud: &Cloud, token: &str, repository: &str, digest: &str) {
    let certs = cert_dir(cloud);
    let creds = format!("x:{token}");
    let at = format!("docker://127.0.0.1:{}/{repository}", cloud.port);
    let tag = nimbus_sign::signature_tag(digest).expect("sha256 digest");
    let args = |verb: &'static str, target: String| {
        vec![
            verb.to_string(),
            "--creds".into(),
            creds.clone(),
            "--cert-dir".into(),
            certs.to_string_lossy().into_owned(),
            target,
        ]
    };
    let run = |a: Vec<String>| skopeo_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let tags: Value = serde_json::from_str(&run(args("list-tags", at.clone()))).expect("json");
    assert!(
        tags["Tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == tag.as_str())),
        "{tag} not listed: {tags}"
    );
    let mut inspect = args("inspect", format!("{at}:{tag}"));
    inspect.insert(1, "--raw".into());
    let manifest: Value = serde_json::from_str(&run(inspect)).expect("manifest json");
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        nimbus_sign::SIMPLE_SIGNING_MEDIA_TYPE,
        "{manifest}"
    );
    assert!(
        layer["annotations"][nimbus_sign::SIGNATURE_ANNOTATION].is_string(),
        "no signature annotation: {manifest}"
    );
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
    assert_signature_tag_in_registry(
        &cloud,
        &cloud.admin_token(),
        "default/app",
        &image_digest(&cloud, "app", "default"),
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
    assert!(
        moved.contains("re-imported or re-pushed after signing"),
        "{moved}"
    );
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

    // The signature route answers the rival "not found", as for a project
    // it cannot see, while the owner reads the signature `image sign` made.
    ok_with_password(&cloud, &["image", "sign", "app", "--key", &key("ops.key")]);
    let tag = nimbus_sign::signature_tag(&image_digest(&cloud, "app", "default")).expect("tag");
    let path = format!("/v1/projects/default/images/app/signatures/{tag}");
    let (status, body) = common::http(&cloud, "GET", &path, Some(token), b"");
    assert_eq!(status, 404, "{body}");
    let (status, body) = common::http(&cloud, "GET", &path, Some(&cloud.admin_token()), b"");
    assert_eq!(status, 200, "{body}");
    let record: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(record["spec"]["references"][0], "default/app", "{record}");
}

/// Pushes a `.sig` manifest holding `pairs` to `repository`'s tag for
/// `digest`, blob by blob, as cosign does; the registry's reply code.
fn push_signature(
    cloud: &Cloud,
    token: &str,
    repository: &str,
    digest: &str,
    pairs: &[SignaturePair],
) -> u16 {
    let built = SignatureManifest::build(pairs).expect("signature manifest");
    for blob in built.blobs.values() {
        push_blob(cloud, token, repository, blob);
    }
    let tag = nimbus_sign::signature_tag(digest).expect("sha256 digest");
    let reply = put_manifest(
        cloud,
        token,
        repository,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        &built.manifest,
    );
    reply.status
}

/// An image pushed with skopeo to `ops/<name>:1.0`, whose command says
/// `word`; its manifest digest.
fn skopeo_push(cloud: &Cloud, token: &str, name: &str, word: &str) -> String {
    let starter = std::fs::read(cloud.starter_tar()).expect("starter tar");
    let archive = oci_archive(&starter, &["/bin/sh", "-c", &format!("echo {word}")]);
    let file = cloud.data_dir().join(format!("{name}-{word}.oci.tar"));
    std::fs::write(&file, &archive.tar).expect("write archive");
    let certs = cert_dir(cloud);
    skopeo_ok(&[
        "copy",
        "--dest-creds",
        &format!("x:{token}"),
        "--dest-cert-dir",
        certs.to_str().expect("utf8"),
        &format!("oci-archive:{}", file.display()),
        &format!("docker://127.0.0.1:{}/ops/{name}:1.0", cloud.port),
    ]);
    archive.manifest_digest
}

fn run_in_ops(cloud: &Cloud, instance: &str, image: &str) -> Output {
    cloud.nimbus(&[
        "instance",
        "run",
        instance,
        "--image",
        image,
        "--project",
        "ops",
    ])
}

/// `instance` of `image` is admitted in ops and its log shows `marker`.
fn runs_in_ops(cloud: &Cloud, instance: &str, image: &str, marker: &str) {
    let out = run_in_ops(cloud, instance, image);
    assert!(
        out.status.success(),
        "{image} was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until(
        Duration::from_secs(60),
        &format!("{instance} to run"),
        || {
            let logs = cloud.nimbus(&["instance", "logs", instance, "--project", "ops"]);
            String::from_utf8_lossy(&logs.stdout)
                .contains(marker)
                .then_some(())
        },
    );
}

#[test]
fn a_signature_pushed_to_the_registry_is_what_the_policy_reads() {
    if !common::is_root("running the signed image") {
        return;
    }
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let eve = member(&cloud, "eve", "member", "other");
    let trusted = KeyPair::generate().expect("key");
    let stranger = KeyPair::generate().expect("key");
    let keys = tempfile::tempdir().expect("temp dir");
    let public = keys.path().join("trusted.pub");
    std::fs::write(&public, trusted.public_key().to_pem()).expect("write key");
    let sign = |key: &KeyPair, repository: &str, digest: &str| {
        nimbus_sign::testing::signed(key, repository, digest)
    };

    let app = skopeo_push(&cloud, &alice, "app", "signed-app-ran");
    let web = skopeo_push(&cloud, &alice, "web", "web-ran");
    let db = skopeo_push(&cloud, &alice, "db", "db-ran");
    cloud.ok(&[
        "policy",
        "set",
        "--require-signature",
        "--key",
        public.to_str().expect("utf8"),
        "--project",
        "ops",
    ]);
    let refused = |instance: &str, image: &str| {
        let out = run_in_ops(&cloud, instance, image);
        assert!(!out.status.success(), "{image} launched under the policy");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unsigned = refused("a", "app:1.0");
    assert!(unsigned.contains("has no signature"), "{unsigned}");

    // Pushed as cosign pushes it: the image launches.
    let status = push_signature(
        &cloud,
        &alice,
        "ops/app",
        &app,
        &[sign(&trusted, "ops/app", &app)],
    );
    assert_eq!(status, 201);
    assert_signature_tag_in_registry(&cloud, &alice, "ops/app", &app);
    runs_in_ops(&cloud, "a", "app:1.0", "signed-app-ran");

    // Signed by another key: refused, naming it.
    push_signature(
        &cloud,
        &alice,
        "ops/web",
        &web,
        &[sign(&stranger, "ops/web", &web)],
    );
    let foreign = refused("w", "web:1.0");
    assert!(foreign.contains("signed only by another key"), "{foreign}");
    assert!(
        foreign.contains(&stranger.public_key().fingerprint()),
        "{foreign}"
    );
    // Under db's tag, a payload that signs app's digest: refused.
    push_signature(
        &cloud,
        &alice,
        "ops/db",
        &db,
        &[sign(&trusted, "ops/db", &app)],
    );
    let other_digest = refused("d", "db:1.0");
    assert!(
        other_digest.contains("is not what was signed") && other_digest.contains(&app),
        "{other_digest}"
    );

    // The tag moved after signing: another image pushed to app:1.0.
    cloud.ok(&["instance", "rm", "a", "--force", "--project", "ops"]);
    let moved_to = skopeo_push(&cloud, &alice, "app", "swapped");
    assert_ne!(moved_to, app);
    let moved = refused("m", "app:1.0");
    assert!(
        moved.contains("re-imported or re-pushed after signing"),
        "{moved}"
    );
    assert!(moved.contains(&app), "{moved}");

    // Another project's token can neither read nor push the signature tag.
    let tag = nimbus_sign::signature_tag(&app).expect("tag");
    let path = format!("/v2/ops/app/manifests/{tag}");
    curl(&cloud, Some(&eve), "GET", &path, &[]).expect_error(404, "NAME_UNKNOWN");
    let forged = sign(&stranger, "ops/app", &moved_to);
    let built = SignatureManifest::build(&[forged]).expect("manifest");
    let file = cloud.data_dir().join("forged.json");
    std::fs::write(&file, &built.manifest).expect("write");
    let tag = nimbus_sign::signature_tag(&moved_to).expect("tag");
    let reply = curl(
        &cloud,
        Some(&eve),
        "PUT",
        &format!("/v2/ops/app/manifests/{tag}"),
        &[
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    );
    reply.expect_error(404, "NAME_UNKNOWN");
    let tags = curl(&cloud, Some(&alice), "GET", "/v2/ops/app/tags/list", &[]);
    assert!(!tags.body.contains(&tag), "{}", tags.body);
    for name in ["w", "d", "m"] {
        assert!(!cloud
            .nimbus(&["instance", "get", name, "--project", "ops"])
            .status
            .success());
    }
    // Image garbage collection keeps the signatures: removing an unrelated
    // image collects, and the signature still reads back.
    cloud.ok(&["image", "rm", "web:1.0", "--project", "ops"]);
    let sig = curl(&cloud, Some(&alice), "GET", &path, &[]);
    assert_eq!(sig.status, 200, "{}", sig.body);
    let manifest: Value = serde_json::from_str(&sig.body).expect("json");
    let payload = manifest["layers"][0]["digest"]
        .as_str()
        .expect("payload digest");
    let blob = curl(
        &cloud,
        Some(&alice),
        "GET",
        &format!("/v2/ops/app/blobs/{payload}"),
        &[],
    );
    assert_eq!(blob.status, 200, "{}", blob.body);
    assert_eq!(
        format!("sha256:{}", sha256_hex(blob.body.as_bytes())),
        payload
    );
    cloud.remove_everything();
}

/// sigstore-rs's cosign client against the registry: `cosign verify --key`
/// and `cosign sign --key` done by an implementation that is not ours.
mod cosign_client {
    use std::str::FromStr;

    use sigstore::cosign::constraint::PrivateKeySigner;
    use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
    use sigstore::cosign::{
        verify_constraints, ClientBuilder, Constraint, CosignCapabilities, SignatureLayer,
    };
    use sigstore::crypto::SigningScheme;
    use sigstore::registry::{Auth, Certificate, CertificateEncoding, ClientConfig, OciReference};

    use super::*;

    pub fn client(cloud: &Cloud) -> sigstore::cosign::Client {
        let ca = std::fs::read(cert_dir(cloud).join("ca.crt")).expect("server certificate");
        let config = ClientConfig {
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: ca,
            }],
            ..ClientConfig::default()
        };
        ClientBuilder::default()
            .with_oci_client_config(config)
            .build()
            .expect("sigstore cosign client")
    }

    pub fn reference(cloud: &Cloud, repository: &str, tag: &str) -> OciReference {
        OciReference::from_str(&format!("127.0.0.1:{}/{repository}:{tag}", cloud.port))
            .expect("reference")
    }

    /// The signature layers sigstore-rs finds for `image` and trusts.
    pub async fn layers(
        client: &mut sigstore::cosign::Client,
        token: &str,
        image: &OciReference,
    ) -> Vec<SignatureLayer> {
        client
            .trusted_signature_layers(&Auth::Basic("x".into(), token.into()), image)
            .await
            .expect("read the signature layers")
    }

    /// Whether the layers hold a signature by `public_pem`, as
    /// `cosign verify --key` decides.
    pub fn verified_by(layers: &[SignatureLayer], public_pem: &[u8]) -> bool {
        let verifier = PublicKeyVerifier::new(public_pem, &SigningScheme::ECDSA_P256_SHA256_ASN1)
            .expect("public key");
        let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
        verify_constraints(layers, constraints.iter()).is_ok()
    }

    /// Signs `image` with a new sigstore-rs key and pushes the signature
    /// to the registry's `.sig` tag; the key's public PEM.
    pub async fn sign_and_push(
        client: &mut sigstore::cosign::Client,
        token: &str,
        image: &OciReference,
    ) -> String {
        let auth = Auth::Basic("x".into(), token.into());
        let (signatures, digest) = client.triangulate(image, &auth).await.expect("triangulate");
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .expect("sigstore key");
        let public = signer
            .to_sigstore_keypair()
            .and_then(|k| k.public_key_to_pem())
            .expect("public key pem");
        let mut layer = SignatureLayer::new_unsigned(image, &digest).expect("layer");
        let signed = PrivateKeySigner::new_with_signer(signer)
            .add_constraint(&mut layer)
            .expect("sign");
        assert!(signed, "sigstore-rs did not sign the layer");
        client
            .push_signature(None, &auth, &signatures, vec![layer])
            .await
            .expect("push the signature as cosign does");
        public
    }
}

#[test]
fn an_independent_cosign_client_verifies_nimbus_signatures_and_its_own_are_enforced() {
    if !common::is_root("running the signed image") {
        return;
    }
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let keys = tempfile::tempdir().expect("temp dir");
    create_key(&cloud, keys.path(), "ops");
    let ops_pub = std::fs::read(keys.path().join("ops.pub")).expect("ops.pub");
    let stranger = KeyPair::generate().expect("key").public_key().to_pem();
    let app = skopeo_push(&cloud, &alice, "app", "cosign-app-ran");
    skopeo_push(&cloud, &alice, "web", "cosign-web-ran");
    let ops_key = keys.path().join("ops.key");
    let ops_key = ops_key.to_str().expect("utf8");
    ok_with_password(
        &cloud,
        &[
            "image",
            "sign",
            "app:1.0",
            "--key",
            ops_key,
            "--project",
            "ops",
        ],
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = cosign_client::client(&cloud);
    let app_ref = cosign_client::reference(&cloud, "ops/app", "1.0");
    let web_ref = cosign_client::reference(&cloud, "ops/web", "1.0");

    // `cosign verify --key ops.pub`: what `nimbus image sign` wrote verifies,
    // for app's digest, and not with another key.
    let layers = runtime.block_on(cosign_client::layers(&mut client, &alice, &app_ref));
    assert_eq!(layers.len(), 1, "one signature on app");
    assert_eq!(
        layers[0]
            .simple_signing
            .critical
            .image
            .docker_manifest_digest,
        app,
        "the payload names app's digest"
    );
    assert!(cosign_client::verified_by(&layers, &ops_pub));
    assert!(!cosign_client::verified_by(&layers, stranger.as_bytes()));
    let none = runtime.block_on(cosign_client::layers(&mut client, &alice, &web_ref));
    assert!(none.is_empty(), "web is not signed: {} layers", none.len());

    // `cosign sign --key`: sigstore-rs signs web and pushes the signature;
    // under a policy trusting that key, Nimbus launches web and still
    // refuses app, which only ops.key signed.
    let theirs = runtime.block_on(cosign_client::sign_and_push(&mut client, &alice, &web_ref));
    let theirs_file = keys.path().join("sigstore.pub");
    std::fs::write(&theirs_file, &theirs).expect("write key");
    cloud.ok(&[
        "policy",
        "set",
        "--require-signature",
        "--key",
        theirs_file.to_str().expect("utf8"),
        "--project",
        "ops",
    ]);
    runs_in_ops(&cloud, "w", "web:1.0", "cosign-web-ran");
    let app_out = run_in_ops(&cloud, "a", "app:1.0");
    assert!(!app_out.status.success(), "app launched under another key");
    let said = String::from_utf8_lossy(&app_out.stderr);
    assert!(said.contains("signed only by another key"), "{said}");

    // Both signatures are where cosign looks: sigstore-rs finds its own too.
    let layers = runtime.block_on(cosign_client::layers(&mut client, &alice, &web_ref));
    assert!(cosign_client::verified_by(&layers, theirs.as_bytes()));
    cloud.ok(&["instance", "rm", "w", "--force", "--project", "ops"]);
}
