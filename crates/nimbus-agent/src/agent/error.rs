//! What the agent's work on an instance can fail with. The message of the
//! error that ends a reconcile pass becomes the instance's status `reason`,
//! so each names what failed, with which value, and what to do next.

use nimbus_api::client::ClientError;

use crate::shim::ShimError;
use crate::vm::prepare::PrepareError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The shim could not be spawned, asked, or cleaned up after, or an
    /// instance file it reads could not be written.
    #[error(transparent)]
    Shim(#[from] ShimError),
    /// A VM's or unikernel's directory (overlay, seed, `vm.json`) could not
    /// be prepared.
    #[error(transparent)]
    VmPrepare(#[from] PrepareError),
    #[error("image {name:?}: {source}")]
    ImageLookup {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "image {name:?} was replaced after the instance was created; create the instance again"
    )]
    ImageReplaced { name: String },
    #[error("image {image:?} may not start on this host: {message}")]
    SignaturePolicy { image: String, message: String },
    #[error("image {name:?} layers: {source}")]
    ImageLayers {
        name: String,
        #[source]
        source: Box<nimbus_image::ImageError>,
    },
    #[error("fetching blob {digest} of image {image:?} from the servers: {source}; the next start tries again")]
    BlobFetch {
        image: String,
        digest: String,
        #[source]
        source: ClientError,
    },
    #[error("blob {digest} of image {image:?} was not kept: {source}")]
    BlobRefused {
        image: String,
        digest: String,
        #[source]
        source: Box<nimbus_image::ImageError>,
    },
    #[error("secret environment of instance {name:?}: {source}")]
    SecretEnv {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free user-namespace id range left on this host; remove instances")]
    NoFreeIdRange,
    /// Blocking work handed to tokio's pool panicked or was cancelled.
    #[error("{what} did not finish: {source}")]
    Join {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// Attaching the instance to its networks failed.
    #[error(transparent)]
    Network(#[from] crate::agent::network::NetworkError),
    /// No driver of this agent runs instances of this kind.
    #[error("volume {name:?}: {source}")]
    VolumeLookup {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("volume {name:?} cannot be mounted here: {detail}")]
    VolumeNotReady { name: String, detail: String },
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("this host has no driver for {kind} instances; upgrade its agent")]
    NoDriver { kind: String },
}

impl AgentError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Run blocking host work on tokio's blocking pool; `what` names it if the
/// task panics.
pub(crate) async fn blocking<T, E>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, AgentError>
where
    T: Send + 'static,
    E: Into<AgentError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| AgentError::Join { what, source })?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_and_the_next_step() {
        let replaced = AgentError::ImageReplaced {
            name: "web:1".into(),
        };
        assert_eq!(
            replaced.to_string(),
            "image \"web:1\" was replaced after the instance was created; create the instance again"
        );
        let net: AgentError = crate::agent::network::NetworkError::RulesNotApplied {
            network: "n1".into(),
        }
        .into();
        assert!(
            net.to_string()
                .starts_with("the rules of network \"n1\" could not be applied"),
            "{net}"
        );
        let shim: AgentError = ShimError::Spawn("no state".into()).into();
        assert_eq!(shim.to_string(), "spawning the shim failed: no state");
    }
}
