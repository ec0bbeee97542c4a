//! The S3 endpoint as a user meets it: buckets and keys made with the
//! `nimbus` CLI, objects moved with the real `aws` CLI, `boto3` and `curl`
//! (installed by scripts/deps), against a real `nimbus up`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::s3::{credentials, start, S3Client, PRINT_ERROR_CODE};
use common::{free_port, wait_until, Cloud};

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("read");
    hex::encode(h.finalize())
}

/// A file of `mib` MiB of varied bytes.
fn random_file(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let path = dir.join(name);
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ mib as u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&path, data).expect("write test file");
    path
}

#[test]
fn aws_cli_and_boto3_store_list_and_fetch_objects() {
    let (cloud, endpoint) = start();
    cloud.ok(&["bucket", "create", "photos"]);
    let listed = cloud.ok(&["bucket", "list"]);
    assert!(listed.contains("photos"), "bucket list: {listed}");
    let s3 = S3Client {
        cloud: &cloud,
        endpoint,
        key: credentials(&cloud, "default"),
    };
    let work = tempfile::tempdir().expect("tempdir");

    // Upload and download, byte for byte.
    let small = random_file(work.path(), "small.bin", 1);
    s3.aws_ok(&[
        "s3",
        "cp",
        &small.to_string_lossy(),
        "s3://photos/2024/small.bin",
    ]);
    let back = work.path().join("back.bin");
    s3.aws_ok(&[
        "s3",
        "cp",
        "s3://photos/2024/small.bin",
        &back.to_string_lossy(),
    ]);
    assert_eq!(sha256_of(&small), sha256_of(&back));

    // Listing with a delimiter folds "directories" into common prefixes.
    s3.aws_ok(&["s3", "cp", &small.to_string_lossy(), "s3://photos/top.bin"]);
    let top = s3.aws_ok(&["s3", "ls", "s3://photos/"]);
    assert!(top.contains("PRE 2024/"), "ls: {top}");
    assert!(top.contains("top.bin"), "ls: {top}");
    assert!(
        !top.contains("small.bin"),
        "ls without --recursive went into 2024/: {top}"
    );
    let listed = s3.boto3_ok(
        "r = s3.list_objects_v2(Bucket='photos', Delimiter='/', MaxKeys=1)\n\
         print([p['Prefix'] for p in r.get('CommonPrefixes', [])], r['IsTruncated'])\n\
         r = s3.list_objects_v2(Bucket='photos', Delimiter='/', MaxKeys=1, ContinuationToken=r['NextContinuationToken'])\n\
         print([o['Key'] for o in r.get('Contents', [])], r['IsTruncated'])\n",
    );
    assert_eq!(listed, "['2024/'] True\n['top.bin'] False\n");

    // ETag is the MD5; user metadata and content type come back; ranges.
    let got = s3.boto3_ok(
        "import hashlib\n\
         s3.put_object(Bucket='photos', Key='note.txt', Body=b'hello world', ContentType='text/plain', Metadata={'owner': 'ann'})\n\
         h = s3.head_object(Bucket='photos', Key='note.txt')\n\
         print(h['ETag'] == '\"%s\"' % hashlib.md5(b'hello world').hexdigest(), h['ContentType'], h['Metadata'])\n\
         print(s3.get_object(Bucket='photos', Key='note.txt', Range='bytes=6-')['Body'].read())\n",
    );
    let mut lines = got.lines();
    assert_eq!(lines.next(), Some("True text/plain {'owner': 'ann'}"));
    assert_eq!(lines.next(), Some("b'world'"));

    // A presigned URL works for anyone holding it, with plain curl.
    let url = s3.aws_ok(&[
        "s3",
        "presign",
        "s3://photos/note.txt",
        "--expires-in",
        "300",
    ]);
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(s3.ca())
        .arg(url.trim())
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello world");

    // Missing things have S3's codes.
    let codes = s3.boto3_ok(&format!(
        "try:\n    s3.get_object(Bucket='photos', Key='nope')\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_object(Bucket='nobucket', Key='x')\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_object(Bucket='photos', Key='note.txt', Range='bytes=100-200')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(codes, "NoSuchKey\nNoSuchBucket\nInvalidRange\n");

    // A bucket with objects is not deleted.
    let out = cloud.nimbus(&["bucket", "rm", "photos"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "bucket rm: {err}");
}

#[test]
fn keys_are_checked_and_kept_to_their_project() {
    let (cloud, endpoint) = start();
    cloud.ok(&["project", "create", "other"]);
    cloud.ok(&["bucket", "create", "mine"]);
    cloud.ok(&["bucket", "create", "theirs", "--project", "other"]);
    let key = credentials(&cloud, "default");

    // A wrong secret is refused.
    let wrong = S3Client {
        cloud: &cloud,
        endpoint: endpoint.clone(),
        key: (key.0.clone(), format!("{}x", &key.1[..39])),
    };
    let code = wrong.boto3_ok(&format!(
        "try:\n    s3.put_object(Bucket='mine', Key='a', Body=b'x')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(code, "SignatureDoesNotMatch\n");

    // A key of project default cannot touch project other's bucket.
    let s3 = S3Client {
        cloud: &cloud,
        endpoint,
        key,
    };
    let code = s3.boto3_ok(&format!(
        "try:\n    s3.put_object(Bucket='theirs', Key='a', Body=b'x')\n{PRINT_ERROR_CODE}\
         try:\n    s3.list_objects_v2(Bucket='theirs')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(code, "AccessDenied\nAccessDenied\n");
    let names = s3.boto3_ok("print(sorted(b['Name'] for b in s3.list_buckets()['Buckets']))");
    assert_eq!(names, "['mine']\n");

    // Any UTF-8 key, `../` included, is only a name: the bytes stay under
    // <data>/objects and come back under that name.
    let escape = s3.boto3_ok(
        "s3.put_object(Bucket='mine', Key='../../../escaped.txt', Body=b'inside')\n\
         print(s3.get_object(Bucket='mine', Key='../../../escaped.txt')['Body'].read())",
    );
    assert_eq!(escape, "b'inside'\n");
    let data = cloud.data_dir();
    for dir in [data.to_path_buf(), data.join(".."), data.join("objects")] {
        assert!(
            !dir.join("escaped.txt").exists(),
            "a file named by the key appeared in {}",
            dir.display()
        );
    }

    // A deleted key stops working.
    cloud.ok(&["s3", "credentials", "rm", &s3.key.0]);
    let code = s3.boto3_ok(&format!(
        "try:\n    s3.list_objects_v2(Bucket='mine')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(code, "InvalidAccessKeyId\n");
    // The secret is not in the store in plain text.
    let store = std::fs::read(data.join("store.db")).unwrap_or_default();
    assert!(
        !store
            .windows(s3.key.1.len())
            .any(|w| w == s3.key.1.as_bytes()),
        "the secret is in the store in plain text"
    );
}

#[test]
fn public_read_buckets_serve_anonymous_gets_only() {
    let (cloud, endpoint) = start();
    cloud.ok(&["bucket", "create", "www", "--public-read"]);
    cloud.ok(&["bucket", "create", "private"]);
    let s3 = S3Client {
        cloud: &cloud,
        endpoint: endpoint.clone(),
        key: credentials(&cloud, "default"),
    };
    s3.boto3_ok(
        "s3.put_object(Bucket='www', Key='index.html', Body=b'<h1>hi</h1>')\n\
         s3.put_object(Bucket='private', Key='secret.txt', Body=b'no')",
    );
    let curl = |url: &str| {
        Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(s3.ca())
            .arg(url)
            .output()
            .expect("curl")
    };
    let out = curl(&format!("{endpoint}/www/index.html"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<h1>hi</h1>\n200");
    let out = curl(&format!("{endpoint}/private/secret.txt"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("403") && text.contains("AccessDenied"),
        "{text}"
    );
    let anonymous_put = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--data",
            "x",
            "--cacert",
        ])
        .arg(s3.ca())
        .arg(format!("{endpoint}/www/defaced.html"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&anonymous_put.stdout), "403");
}

#[test]
fn kill_9_during_uploads_keeps_every_acknowledged_object_and_shows_no_partial_one() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cloud = Cloud::start_with(&["--s3-listen", &listen]);
    let endpoint = format!("https://{listen}");
    cloud.ok(&["bucket", "create", "crash"]);
    let key = credentials(&cloud, "default");
    // 20 clients upload 4 MiB objects in a loop, each printing the key it
    // got a 200 for, with the SHA-256 of what it sent.
    let script = "import hashlib, os, threading\n\
        from botocore.config import Config\n\
        s3 = boto3.client('s3', endpoint_url=s3.meta.endpoint_url, config=Config(retries={'max_attempts': 0}))\n\
        lock = threading.Lock()\n\
        def run(i):\n    n = 0\n    while True:\n        body = os.urandom(4 << 20)\n        key = 'c%d/%d' % (i, n)\n        try:\n            s3.put_object(Bucket='crash', Key=key, Body=body)\n        except Exception:\n            return\n        with lock:\n            print(key, hashlib.sha256(body).hexdigest(), flush=True)\n        n += 1\n\
        ts = [threading.Thread(target=run, args=(i,)) for i in range(20)]\n\
        [t.start() for t in ts]\n[t.join() for t in ts]\n";
    let mut c = Command::new("python3");
    S3Client {
        cloud: &cloud,
        endpoint: endpoint.clone(),
        key: key.clone(),
    }
    .env(&mut c);
    let prelude =
        format!("import boto3, botocore\ns3 = boto3.client('s3', endpoint_url={endpoint:?})\n");
    let acks_path = cloud.data_dir().join("acks.txt");
    let acks_file = std::fs::File::create(&acks_path).expect("acks file");
    let mut clients = c
        .args(["-c", &format!("{prelude}{script}")])
        .stdout(acks_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    wait_until(Duration::from_secs(60), "40 acknowledged uploads", || {
        let text = std::fs::read_to_string(&acks_path).unwrap_or_default();
        (text.lines().count() >= 40).then_some(())
    });
    cloud.kill_daemon();
    let _ = clients.wait();
    let acked: Vec<(String, String)> = std::fs::read_to_string(&acks_path)
        .expect("acks")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, h)| (k.to_string(), h.to_string()))
        .collect();
    assert!(acked.len() >= 40);

    cloud.spawn_daemon();
    cloud.wait_ready();
    let s3 = S3Client {
        cloud: &cloud,
        endpoint,
        key,
    };
    // Every object listed is whole (its bytes hash to what was sent when
    // acknowledged, or it is an unacknowledged upload that completed), and
    // every acknowledged one is listed.
    let listing = s3.boto3_ok(
        "import hashlib\n\
         p = s3.get_paginator('list_objects_v2')\n\
         for page in p.paginate(Bucket='crash'):\n    for o in page.get('Contents', []):\n        b = s3.get_object(Bucket='crash', Key=o['Key'])['Body'].read()\n        print(o['Key'], hashlib.sha256(b).hexdigest(), len(b))\n",
    );
    let stored: std::collections::HashMap<&str, (&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?, (it.next()?, it.next()?)))
        })
        .collect();
    for (key, sha) in &acked {
        let Some((got, _)) = stored.get(key.as_str()) else {
            panic!("acknowledged object {key} is gone after kill -9");
        };
        assert_eq!(got, sha, "acknowledged object {key} changed after kill -9");
    }
    for (key, (_, len)) in &stored {
        assert_eq!(
            *len,
            (4 << 20).to_string(),
            "partial object {key} is visible"
        );
    }
    // No data file is left that no object names.
    let files = std::fs::read_dir(cloud.data_dir().join("objects").join("data"))
        .expect("objects/data")
        .count();
    assert_eq!(files, stored.len(), "orphaned data files after restart");
}

#[test]
fn multipart_copy_and_batch_delete_work_with_unchanged_clients() {
    let (cloud, endpoint) = start();
    cloud.ok(&["bucket", "create", "big"]);
    let s3 = S3Client {
        cloud: &cloud,
        endpoint,
        key: credentials(&cloud, "default"),
    };
    let work = tempfile::tempdir().expect("tempdir");

    // The aws CLI splits 100 MiB into 8 MiB parts: a multipart upload.
    let big = random_file(work.path(), "big.iso", 100);
    s3.aws_ok(&["s3", "cp", &big.to_string_lossy(), "s3://big/big.iso"]);
    let etag = s3.boto3_ok("print(s3.head_object(Bucket='big', Key='big.iso')['ETag'])");
    assert!(
        etag.trim().ends_with("-13\""),
        "not a 13-part multipart ETag: {etag}"
    );
    let back = work.path().join("back.iso");
    s3.aws_ok(&["s3", "cp", "s3://big/big.iso", &back.to_string_lossy()]);
    assert_eq!(
        sha256_of(&big),
        sha256_of(&back),
        "100 MiB came back different"
    );

    // Parts and uploads can be listed, and an upload aborted.
    let out = s3.boto3_ok(&format!(
        "u = s3.create_multipart_upload(Bucket='big', Key='half')['UploadId']\n\
         s3.upload_part(Bucket='big', Key='half', UploadId=u, PartNumber=1, Body=b'a' * (5 << 20))\n\
         s3.upload_part(Bucket='big', Key='half', UploadId=u, PartNumber=2, Body=b'b')\n\
         print([(p['PartNumber'], p['Size']) for p in s3.list_parts(Bucket='big', Key='half', UploadId=u)['Parts']])\n\
         print([x['Key'] for x in s3.list_multipart_uploads(Bucket='big').get('Uploads', [])])\n\
         s3.abort_multipart_upload(Bucket='big', Key='half', UploadId=u)\n\
         print(len(s3.list_multipart_uploads(Bucket='big').get('Uploads', [])))\n\
         try:\n    s3.head_object(Bucket='big', Key='half')\n{PRINT_ERROR_CODE}"
    ));
    assert_eq!(out, "[(1, 5242880), (2, 1)]\n['half']\n0\n404\n");

    // Copy keeps bytes and metadata; v1 listing; DeleteObjects.
    let out = s3.boto3_ok(
        "s3.put_object(Bucket='big', Key='a.txt', Body=b'copy me', Metadata={'k': 'v'})\n\
         s3.copy_object(Bucket='big', Key='b.txt', CopySource={'Bucket': 'big', 'Key': 'a.txt'})\n\
         o = s3.get_object(Bucket='big', Key='b.txt')\n\
         print(o['Body'].read(), o['Metadata'])\n\
         print([o['Key'] for o in s3.list_objects(Bucket='big', Prefix='a')['Contents']])\n\
         r = s3.delete_objects(Bucket='big', Delete={'Objects': [{'Key': 'a.txt'}, {'Key': 'b.txt'}, {'Key': 'big.iso'}]})\n\
         print(sorted(d['Key'] for d in r['Deleted']))\n\
         print(s3.list_objects_v2(Bucket='big')['KeyCount'])",
    );
    assert_eq!(
        out,
        "b'copy me' {'k': 'v'}\n['a.txt']\n['a.txt', 'b.txt', 'big.iso']\n0\n"
    );
    // Every data file went with its object or part.
    let files = std::fs::read_dir(cloud.data_dir().join("objects").join("data"))
        .expect("objects/data")
        .count();
    assert_eq!(files, 0, "data files left after every object was deleted");
    cloud.ok(&["bucket", "rm", "big"]);
}

#[test]
fn limits_digests_and_conditions_are_enforced() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cloud = Cloud::start_with(&["--s3-listen", &listen, "--max-object-size", "1MiB"]);
    cloud.ok(&["bucket", "create", "strict"]);
    let s3 = S3Client {
        cloud: &cloud,
        endpoint: format!("https://{listen}"),
        key: credentials(&cloud, "default"),
    };
    let out = s3.boto3_ok(&format!(
        "import base64, hashlib\n\
         try:\n    s3.put_object(Bucket='strict', Key='big', Body=b'x' * (2 << 20))\n{PRINT_ERROR_CODE}\
         wrong = base64.b64encode(hashlib.md5(b'other').digest()).decode()\n\
         try:\n    s3.put_object(Bucket='strict', Key='md5', Body=b'data', ContentMD5=wrong)\n{PRINT_ERROR_CODE}\
         right = base64.b64encode(hashlib.md5(b'data').digest()).decode()\n\
         e = s3.put_object(Bucket='strict', Key='md5', Body=b'data', ContentMD5=right)['ETag']\n\
         print(s3.get_object(Bucket='strict', Key='md5', IfMatch=e)['Body'].read())\n\
         try:\n    s3.get_object(Bucket='strict', Key='md5', IfNoneMatch=e)\n{PRINT_ERROR_CODE}\
         try:\n    s3.get_object(Bucket='strict', Key='md5', IfMatch='\"0123\"')\n{PRINT_ERROR_CODE}\
         print([o['Key'] for o in s3.list_objects_v2(Bucket='strict').get('Contents', [])])"
    ));
    assert_eq!(
        out,
        "EntityTooLarge\nBadDigest\nb'data'\n304\nPreconditionFailed\n['md5']\n"
    );
    // Refused uploads leave no data behind.
    let files = std::fs::read_dir(cloud.data_dir().join("objects").join("data"))
        .expect("objects/data")
        .count();
    assert_eq!(files, 1);
}
