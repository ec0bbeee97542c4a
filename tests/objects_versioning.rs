//! Bucket versioning as a user meets it with the real `aws` CLI and
//! `boto3` (installed by scripts/deps) against a real `nimbus up`: every
//! PUT a version with its own bytes, deletes as markers, old versions read
//! and removed by id, Suspended writing the `null` version, listings and
//! paging, other projects kept out, and every version billed.

mod common;

use std::path::Path;

use chrono::{DateTime, Utc};
use common::s3::{start, S3Client, PRINT_ERROR_CODE};
use common::wait_until;

/// Data files under the cloud's object store.
fn data_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("objects").join("data"))
        .expect("objects/data")
        .count()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (Key, VersionId, IsLatest) of one listed version or marker.
type Entry = (String, String, bool);

/// Every version, then every marker, as `aws s3api list-object-versions`
/// prints them.
fn listed(s3: &S3Client, bucket: &str) -> (Vec<Entry>, Vec<Entry>) {
    let v = json(&s3.aws_ok(&["s3api", "list-object-versions", "--bucket", bucket]));
    let rows = |field: &str| -> Vec<Entry> {
        v[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["Key"].as_str().unwrap_or("").to_string(),
                            e["VersionId"].as_str().unwrap_or("").to_string(),
                            e["IsLatest"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    (rows("Versions"), rows("DeleteMarkers"))
}

/// Set `bucket`'s versioning with the aws CLI; what it then reads back.
fn set_versioning(s3: &S3Client, bucket: &str, status: &str) -> serde_json::Value {
    let config = format!("Status={status}");
    s3.aws_ok(&[
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        bucket,
        "--versioning-configuration",
        &config,
    ]);
    json(&s3.aws_ok(&["s3api", "get-bucket-versioning", "--bucket", bucket]))
}

#[test]
fn versions_keep_their_bytes_through_overwrites_deletes_and_suspension() {
    let (cloud, endpoint) = start();
    cloud.ok(&["bucket", "create", "docs"]);
    let s3 = S3Client::of(&cloud, &endpoint, "default");
    let work = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, bytes: &[u8]| {
        let p = work.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_string_lossy().into_owned()
    };
    // PUT r.txt with the aws CLI: the version id it answers ("" if none).
    let put = |name: &str, bytes: &[u8]| -> String {
        let out = json(&s3.aws_ok(&[
            "s3api",
            "put-object",
            "--bucket",
            "docs",
            "--key",
            "r.txt",
            "--body",
            &file(name, bytes),
        ]));
        out["VersionId"].as_str().unwrap_or_default().to_string()
    };
    // Stored before versioning: it becomes the `null` version.
    assert_eq!(put("v0", b"zero"), "");

    // A bucket never set shows no status at all.
    let never = s3.aws_ok(&["s3api", "get-bucket-versioning", "--bucket", "docs"]);
    assert!(!never.contains("Status"), "never-versioned bucket: {never}");
    assert_eq!(set_versioning(&s3, "docs", "Enabled")["Status"], "Enabled");

    // Two PUTs: two versions, each with its own bytes (binary, byte-exact).
    let one: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let two = b"second version".to_vec();
    let v1 = put("v1", &one);
    let v2 = put("v2", &two);
    assert_ne!(v1, v2);
    assert!(
        v1.len() == 32 && v2.len() == 32,
        "version ids {v1:?} {v2:?}"
    );
    let get = |version: Option<&str>| -> Vec<u8> {
        let out = work.path().join("got");
        let mut args = vec!["s3api", "get-object", "--bucket", "docs", "--key", "r.txt"];
        if let Some(v) = version {
            args.extend(["--version-id", v]);
        }
        let out_s = out.to_string_lossy().into_owned();
        args.push(&out_s);
        s3.aws_ok(&args);
        std::fs::read(&out).expect("downloaded")
    };
    assert_eq!(get(None), two);
    assert_eq!(
        get(Some(&v1)),
        one,
        "the old version's bytes came back different"
    );
    assert_eq!(get(Some("null")), b"zero");
    let (versions, markers) = listed(&s3, "docs");
    assert_eq!(
        versions,
        [
            ("r.txt".into(), v2.clone(), true),
            ("r.txt".into(), v1.clone(), false),
            ("r.txt".into(), "null".into(), false)
        ]
    );
    assert!(markers.is_empty());
    assert_eq!(data_files(cloud.data_dir()), 3);

    // DELETE adds a marker: GET is 404 and says it met a delete marker;
    // listings leave the key out; the versions stay.
    let deleted = json(&s3.aws_ok(&[
        "s3api",
        "delete-object",
        "--bucket",
        "docs",
        "--key",
        "r.txt",
    ]));
    assert_eq!(deleted["DeleteMarker"], true, "{deleted}");
    let marker = deleted["VersionId"]
        .as_str()
        .expect("marker id")
        .to_string();
    let after = s3.boto3_ok(&format!(
        "try:\n    s3.get_object(Bucket='docs', Key='r.txt')\n\
         except botocore.exceptions.ClientError as e:\n    print(e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPHeaders'].get('x-amz-delete-marker'))\n\
         print(s3.list_objects_v2(Bucket='docs')['KeyCount'], len(s3.list_objects(Bucket='docs').get('Contents', [])))\n\
         try:\n    s3.get_object(Bucket='docs', Key='r.txt', VersionId={marker:?})\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(after, "NoSuchKey true\n0 0\nMethodNotAllowed\n");
    let (versions, markers) = listed(&s3, "docs");
    assert_eq!(versions.len(), 3);
    assert!(
        versions.iter().all(|v| !v.2),
        "a version is latest under a marker"
    );
    assert_eq!(markers, [("r.txt".into(), marker.clone(), true)]);
    assert_eq!(
        data_files(cloud.data_dir()),
        3,
        "a delete marker removed data"
    );

    let delete_version = |id: &str| {
        let args = [
            "s3api",
            "delete-object",
            "--bucket",
            "docs",
            "--key",
            "r.txt",
        ];
        s3.aws_ok(&[&args[..], &["--version-id", id]].concat());
    };
    // Deleting the marker by id un-deletes.
    delete_version(&marker);
    assert_eq!(get(None), two);

    // Deleting a version by id frees it: its data file goes, the next one
    // is current, and its id no longer answers.
    delete_version(&v2);
    assert_eq!(get(None), one);
    assert_eq!(data_files(cloud.data_dir()), 2);
    let code = s3.boto3_ok(&format!(
        "try:\n    s3.get_object(Bucket='docs', Key='r.txt', VersionId={v2:?})\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_object(Bucket='docs', Key='r.txt', VersionId='../../etc')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(code, "NoSuchVersion\nInvalidArgument\n");

    // CopySource with a versionId copies that version.
    let copied = s3.boto3_ok(
        "r = s3.copy_object(Bucket='docs', Key='copy.txt', CopySource={'Bucket': 'docs', 'Key': 'r.txt', 'VersionId': 'null'})\n\
         print(r['CopySourceVersionId'], r['VersionId'] != 'null')\n\
         print(s3.get_object(Bucket='docs', Key='copy.txt')['Body'].read())",
    );
    assert_eq!(copied, "null True\nb'zero'\n");

    // Completing a multipart upload makes a version too.
    let multipart = s3.boto3_ok(
        "u = s3.create_multipart_upload(Bucket='docs', Key='mp')['UploadId']\n\
         e = s3.upload_part(Bucket='docs', Key='mp', UploadId=u, PartNumber=1, Body=b'parts')['ETag']\n\
         r = s3.complete_multipart_upload(Bucket='docs', Key='mp', UploadId=u, MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': e}]})\n\
         print(len(r['VersionId']), s3.get_object(Bucket='docs', Key='mp', VersionId=r['VersionId'])['Body'].read())",
    );
    assert_eq!(multipart, "32 b'parts'\n");

    // Suspended: writes are the `null` version, replacing the earlier one
    // (and its data); the other versions stay.
    assert_eq!(
        set_versioning(&s3, "docs", "Suspended")["Status"],
        "Suspended"
    );
    let files_before = data_files(cloud.data_dir());
    assert_eq!(put("v3", b"suspended"), "null");
    assert_eq!(get(Some("null")), b"suspended");
    assert_eq!(get(Some(&v1)), one);
    let (versions, _) = listed(&s3, "docs");
    let of_r: Vec<_> = versions.iter().filter(|v| v.0 == "r.txt").collect();
    assert_eq!(of_r.len(), 2, "{versions:?}");
    assert_eq!(*of_r[0], ("r.txt".into(), "null".into(), true));
    assert_eq!(
        data_files(cloud.data_dir()),
        files_before,
        "the replaced null version's data stayed"
    );
    let bad = s3.aws(&[
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        "docs",
        "--versioning-configuration",
        "Status=Off",
    ]);
    assert!(!bad.status.success(), "Status=Off was accepted");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MalformedXML"));
    let still = json(&s3.aws_ok(&["s3api", "get-bucket-versioning", "--bucket", "docs"]));
    assert_eq!(
        still["Status"], "Suspended",
        "a refused setting changed the bucket"
    );
}

#[test]
fn version_listings_page_fold_prefixes_and_stay_in_their_project() {
    let (cloud, endpoint) = start();
    cloud.ok(&["project", "create", "other"]);
    cloud.ok(&["bucket", "create", "tree"]);
    let s3 = S3Client::of(&cloud, &endpoint, "default");
    // a: two versions; b/x, b/y: one each; c: a version under a marker.
    s3.boto3_ok(
        "s3.put_bucket_versioning(Bucket='tree', VersioningConfiguration={'Status': 'Enabled'})\n\
         for k in ['a', 'a', 'b/x', 'b/y', 'c']:\n    s3.put_object(Bucket='tree', Key=k, Body=k.encode())\n\
         s3.delete_object(Bucket='tree', Key='c')",
    );
    // One page of everything, then pages of one entry each, resumed with
    // key-marker and version-id-marker: the same entries in the same order.
    let walk = "def entries(r):\n    e = [(v['Key'], v['VersionId'], v['IsLatest'], 'v') for v in r.get('Versions', [])]\n    e += [(m['Key'], m['VersionId'], m['IsLatest'], 'm') for m in r.get('DeleteMarkers', [])]\n    return e\n\
        whole = s3.list_object_versions(Bucket='tree')\n\
        assert not whole['IsTruncated']\n\
        paged, kw = [], {}\n\
        while True:\n    r = s3.list_object_versions(Bucket='tree', MaxKeys=1, **kw)\n    paged += entries(r)\n    if not r['IsTruncated']:\n        break\n    kw = {'KeyMarker': r['NextKeyMarker'], 'VersionIdMarker': r['NextVersionIdMarker']}\n\
        key = lambda e: (e[0], not e[2])\n\
        print(sorted(entries(whole), key=key) == sorted(paged, key=key), len(paged))\n\
        print([(k, latest, kind) for k, _, latest, kind in paged])\n\
        r = s3.list_object_versions(Bucket='tree', Delimiter='/')\n\
        print([p['Prefix'] for p in r.get('CommonPrefixes', [])], sorted({v['Key'] for v in r.get('Versions', [])}))\n\
        r = s3.list_object_versions(Bucket='tree', Prefix='b/')\n\
        print([v['Key'] for v in r['Versions']])\n\
        print(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='tree')['Contents']))\n";
    let out = s3.boto3_ok(walk);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "True 6", "{out}");
    assert_eq!(
        lines[1],
        "[('a', True, 'v'), ('a', False, 'v'), ('b/x', True, 'v'), ('b/y', True, 'v'), ('c', True, 'm'), ('c', False, 'v')]",
        "{out}"
    );
    assert_eq!(lines[2], "['b/'] ['a', 'c']", "{out}");
    assert_eq!(lines[3], "['b/x', 'b/y']", "{out}");
    assert_eq!(lines[4], "['a', 'b/x', 'b/y']", "{out}");

    // Another project's key sees none of it, and cannot change it.
    let version = s3.boto3_ok(
        "print(s3.list_object_versions(Bucket='tree', Prefix='a')['Versions'][1]['VersionId'])",
    );
    let stranger = S3Client::of(&cloud, &endpoint, "other");
    let codes = stranger.boto3_ok(&format!(
        "try:\n    s3.list_object_versions(Bucket='tree')\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_object(Bucket='tree', Key='a', VersionId={:?})\n{PRINT_ERROR_CODE}\
         try:\n    s3.delete_object(Bucket='tree', Key='a', VersionId={:?})\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_bucket_versioning(Bucket='tree')\n{PRINT_ERROR_CODE}\
         try:\n    s3.put_bucket_versioning(Bucket='tree', VersioningConfiguration={{'Status': 'Suspended'}})\n{PRINT_ERROR_CODE}",
        version.trim(),
        version.trim()
    ));
    assert_eq!(codes, "AccessDenied\n".repeat(5));
    let still = s3.boto3_ok(&format!(
        "print(s3.get_object(Bucket='tree', Key='a', VersionId={:?})['Body'].read(), s3.get_bucket_versioning(Bucket='tree')['Status'])",
        version.trim()
    ));
    assert_eq!(still, "b'a' Enabled\n");
}

/// Object GiB-hours billed to `default` over `[from, to]` (whole seconds).
fn object_gib_hours(cloud: &common::Cloud, from: i64, to: i64) -> f64 {
    let fmt = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .expect("time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    wait_until(
        std::time::Duration::from_secs(10),
        "the clock to pass the window",
        || (Utc::now().timestamp() > to).then_some(()),
    );
    let usage = cloud
        .json(&["usage", "--from", &fmt(from), "--to", &fmt(to)])
        .expect("usage -o json");
    usage["totals"]["object_gib_hours"]
        .as_f64()
        .unwrap_or_else(|| panic!("no object GiB-hours: {usage}"))
}

#[test]
fn versions_are_billed_and_keep_their_bucket_until_every_one_is_deleted() {
    let (cloud, endpoint) = start();
    cloud.ok(&["bucket", "create", "kept"]);
    let s3 = S3Client::of(&cloud, &endpoint, "default");
    let (old, new) = (3u64 << 20, 1u64 << 20);
    let ids = s3.boto3_ok(&format!(
        "s3.put_bucket_versioning(Bucket='kept', VersioningConfiguration={{'Status': 'Enabled'}})\n\
         a = s3.put_object(Bucket='kept', Key='f', Body=b'o' * {old})['VersionId']\n\
         b = s3.put_object(Bucket='kept', Key='f', Body=b'n' * {new})['VersionId']\n\
         print(a, b)"
    ));
    let (old_id, _new_id) = ids.trim().split_once(' ').expect("two ids");

    // Both versions are stored, so both are billed: over a window after
    // both PUTs, (old + new) bytes for its whole length.
    let gib_hour = 3600.0 * (1u64 << 30) as f64;
    let from = Utc::now().timestamp() + 1;
    let billed = object_gib_hours(&cloud, from, from + 2);
    let want = (old + new) as f64 * 2.0 / gib_hour;
    assert!(
        (billed - want).abs() <= want * 1e-6,
        "two versions billed {billed} GiB-h, expected {want}"
    );

    // Only delete markers and old versions left: the bucket is not empty.
    s3.boto3_ok("s3.delete_object(Bucket='kept', Key='f')");
    let listed = s3.boto3_ok("print(s3.list_objects_v2(Bucket='kept')['KeyCount'])");
    assert_eq!(listed, "0\n");
    let out = cloud.nimbus(&["bucket", "rm", "kept"]);
    assert!(
        !out.status.success(),
        "a bucket holding versions was removed"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let code = s3.boto3_ok(&format!(
        "try:\n    s3.delete_bucket(Bucket='kept')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(code, "BucketNotEmpty\n");

    // The old version deleted by id stops being billed at once.
    s3.boto3_ok(&format!(
        "s3.delete_object(Bucket='kept', Key='f', VersionId={old_id:?})"
    ));
    let from = Utc::now().timestamp() + 1;
    let billed = object_gib_hours(&cloud, from, from + 2);
    let want = new as f64 * 2.0 / gib_hour;
    assert!(
        (billed - want).abs() <= want * 1e-6,
        "after deleting the old version billed {billed} GiB-h, expected {want}"
    );

    // DeleteObjects with version ids removes the rest; then the bucket goes.
    let out = s3.boto3_ok(
        "r = s3.list_object_versions(Bucket='kept')\n\
         ids = [{'Key': v['Key'], 'VersionId': v['VersionId']} for v in r.get('Versions', []) + r.get('DeleteMarkers', [])]\n\
         d = s3.delete_objects(Bucket='kept', Delete={'Objects': ids})\n\
         print(len(ids), sorted(bool(x.get('DeleteMarker')) for x in d['Deleted']), d.get('Errors'))\n\
         r = s3.list_object_versions(Bucket='kept')\n\
         print(len(r.get('Versions', [])), len(r.get('DeleteMarkers', [])))",
    );
    assert_eq!(out, "2 [False, True] None\n0 0\n");
    assert_eq!(
        data_files(cloud.data_dir()),
        0,
        "data left after every version went"
    );
    cloud.ok(&["bucket", "rm", "kept"]);
}
