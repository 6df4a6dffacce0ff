//! Image references: parsing (through oci-client's docker-compatible
//! parser), the canonical form the store keys tags by, and the short
//! "familiar" form users see.
use oci_client::Reference;

use super::ImageError;

const HUB: &str = "docker.io/";
const HUB_LIBRARY: &str = "docker.io/library/";

/// Parses `s` the way docker does (`bb` = `docker.io/library/bb:latest`).
pub(crate) fn parse(s: &str) -> Result<Reference, ImageError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(ImageError::InvalidReference {
            reference: s.to_owned(),
            reason: "it is empty".into(),
        });
    }
    if trimmed.contains("://") {
        return Err(ImageError::InvalidReference {
            reference: s.to_owned(),
            reason: "a reference has no scheme (drop the http:// or https://)".into(),
        });
    }
    Reference::try_from(trimmed).map_err(|e| ImageError::InvalidReference {
        reference: s.to_owned(),
        reason: e.to_string(),
    })
}

/// The canonical full form: `registry/repository:tag` or
/// `registry/repository@digest` (`docker.io/library/bb:latest`).
pub fn normalize_reference(s: &str) -> Result<String, ImageError> {
    Ok(parse(s)?.whole())
}

/// The `registry/repository` part of a reference.
pub(crate) fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The short form docker prints: `docker.io/library/bb:1` → `bb:1`,
/// `docker.io/me/app:1` → `me/app:1`; other registries stay as they are.
pub fn familiar_name(full: &str) -> String {
    if let Some(rest) = full.strip_prefix(HUB_LIBRARY)
        && !rest.contains('/')
    {
        return rest.to_owned();
    }
    full.strip_prefix(HUB).unwrap_or(full).to_owned()
}

/// Splits a familiar `repo:tag` (or `repo@digest`) into docker's
/// REPOSITORY and TAG columns. A colon before the last `/` is a port.
pub fn split_familiar(name: &str) -> (String, String) {
    if let Some((repo, _digest)) = name.split_once('@') {
        return (repo.to_owned(), "<none>".to_owned());
    }
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_owned(),
            name[slash + i + 1..].to_owned(),
        ),
        None => (name.to_owned(), "<none>".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize_reference("bb").unwrap(),
            "docker.io/library/bb:latest"
        );
        assert_eq!(
            normalize_reference("198.51.100.1:5000/bb:1").unwrap(),
            "198.51.100.1:5000/bb:1"
        );
        assert_eq!(
            normalize_reference("me/app:2").unwrap(),
            "docker.io/me/app:2"
        );
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("http://x/y").is_err());
        assert!(normalize_reference("bb@notadigest").is_err());
    }

    #[test]
    fn familiar_names_drop_the_hub() {
        assert_eq!(familiar_name("docker.io/library/bb:1"), "bb:1");
        assert_eq!(familiar_name("docker.io/me/app:1"), "me/app:1");
        assert_eq!(
            familiar_name("198.51.100.1:5000/bb:1"),
            "198.51.100.1:5000/bb:1"
        );
    }

    #[test]
    fn splits_repository_and_tag() {
        assert_eq!(
            split_familiar("198.51.100.1:5000/bb:1"),
            ("198.51.100.1:5000/bb".into(), "1".into())
        );
        assert_eq!(split_familiar("bb:latest"), ("bb".into(), "latest".into()));
        assert_eq!(
            split_familiar("host:5000/bb"),
            ("host:5000/bb".into(), "<none>".into())
        );
        assert_eq!(
            split_familiar("bb@sha256:abc"),
            ("bb".into(), "<none>".into())
        );
    }
}
