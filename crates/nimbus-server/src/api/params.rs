//! The path parameters of the API's routes, for the OpenAPI document: one
//! struct per route shape, so every `{param}` of a path is declared with a
//! description. Handlers still extract them as plain strings.

use utoipa::IntoParams;

/// `{project}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// Project name.
    pub project: String,
}

/// `{project}` and the `{name}` of an instance in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstancePath {
    /// Project name.
    pub project: String,
    /// Instance name.
    pub name: String,
}

/// `{project}` and the `{name}` of an image in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImagePath {
    /// Project name.
    pub project: String,
    /// Image name.
    pub name: String,
}

/// `{project}` and the `{name}` of a network in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NetworkPath {
    /// Project name.
    pub project: String,
    /// Network name.
    pub name: String,
}

/// `{project}` and the `{name}` of a security group in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecgroupPath {
    /// Project name.
    pub project: String,
    /// Security group name.
    pub name: String,
}

/// `{project}` and the `{name}` of a published port in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AddressPath {
    /// Project name.
    pub project: String,
    /// Published port name.
    pub name: String,
}

/// `{project}` and the `{user}` whose role binding in it is meant.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BindingPath {
    /// Project name.
    pub project: String,
    /// User name (a role binding is named after its user).
    pub user: String,
}

/// `{user}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// User name.
    pub user: String,
}

/// `{token}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// Token id: the `<id>` part of `nmb_<id>_<secret>`.
    pub token: String,
}

/// `{host}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HostPath {
    /// Host name.
    pub host: String,
}

/// `{project}` and the `{name}` of a volume in it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VolumePath {
    /// Project name.
    pub project: String,
    /// Volume name.
    pub name: String,
}

/// `{project}`, the `{name}` of a volume in it and one of its `{snapshot}`s.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SnapshotPath {
    /// Project name.
    pub project: String,
    /// Volume name.
    pub name: String,
    /// Snapshot name.
    pub snapshot: String,
}

/// `{token}` of a join token
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JoinTokenPath {
    /// Join token id: the `<id>` part of `nmbjoin_<id>_<secret>_<ca-sha256>`.
    pub token: String,
}

/// `{project}`, the `{name}` of an image in it and the `{digest}` of one of
/// its blobs.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImageBlobPath {
    /// Project name.
    pub project: String,
    /// Image name.
    pub name: String,
    /// The blob's digest, `sha256:<64 lowercase hex digits>`: one of the
    /// image's layers, its disk, kernel or initrd.
    pub digest: String,
}
