//! An S3 client of a test cloud: the real `aws` CLI and `boto3` (installed
//! by scripts/deps) with an access key of one project.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{free_port, Cloud};

/// A cloud with its S3 endpoint on a port of its own.
pub fn start() -> (Cloud, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cloud = Cloud::start_with(&["--s3-listen", &listen]);
    (cloud, format!("https://{listen}"))
}

/// An access key of `project`: (id, secret).
pub fn credentials(cloud: &Cloud, project: &str) -> (String, String) {
    let v = cloud
        .json(&["s3", "credentials", "create", "--project", project])
        .expect("s3 credentials create");
    let id = v["access_key_id"]
        .as_str()
        .expect("access key id")
        .to_string();
    let secret = v["secret_access_key"].as_str().expect("secret").to_string();
    (id, secret)
}

pub struct S3Client<'a> {
    pub cloud: &'a Cloud,
    pub endpoint: String,
    pub key: (String, String),
}

impl<'a> S3Client<'a> {
    /// A client with a new access key of `project`.
    pub fn of(cloud: &'a Cloud, endpoint: &str, project: &str) -> S3Client<'a> {
        S3Client {
            cloud,
            endpoint: endpoint.to_string(),
            key: credentials(cloud, project),
        }
    }
    pub fn ca(&self) -> PathBuf {
        self.cloud.data_dir().join("tls").join("cert.pem")
    }

    pub fn env(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", &self.key.0)
            .env("AWS_SECRET_ACCESS_KEY", &self.key.1)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CA_BUNDLE", self.ca())
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    }

    pub fn aws(&self, args: &[&str]) -> Output {
        let mut c = Command::new("aws");
        self.env(&mut c);
        c.args(["--endpoint-url", &self.endpoint])
            .args(args)
            .output()
            .expect("run aws (scripts/deps installs it)")
    }

    pub fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a boto3 script with `s3` bound to a client of the endpoint.
    pub fn boto3(&self, script: &str) -> Output {
        let mut c = Command::new("python3");
        self.env(&mut c);
        let prelude = format!(
            "import boto3, botocore, sys\ns3 = boto3.client('s3', endpoint_url={:?})\n",
            self.endpoint
        );
        c.args(["-c", &format!("{prelude}{script}")])
            .output()
            .expect("run python3 with boto3 (scripts/deps installs it)")
    }

    pub fn boto3_ok(&self, script: &str) -> String {
        let out = self.boto3(script);
        assert!(
            out.status.success(),
            "boto3 script failed: {}{}\n{script}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The S3 error code a boto3 call gets, printed by the script.
pub const PRINT_ERROR_CODE: &str =
    "except botocore.exceptions.ClientError as e:\n    print(e.response['Error']['Code'])\n";
