//! The JSON documents of an image (manifest, index, config) as far as the
//! store needs them, and the choice of one manifest from a multi-platform
//! index. No I/O.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Digest, ImageError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a pull accepts from a registry, most specific first.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] =
    &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A content descriptor (OCI image spec, descriptor.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The platform an image (or an index entry) is built for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// This node's platform: `linux/<arch>` with docker's arch names.
    pub fn current() -> Platform {
        let architecture = crate::version::arch().to_owned();
        let variant = match architecture.as_str() {
            "arm64" => Some("v8".to_owned()),
            _ => None,
        };
        Platform {
            architecture,
            os: "linux".into(),
            variant,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// A manifest document: one image, or an index of them.
#[derive(Debug, Clone)]
pub(crate) enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

/// Parses a manifest or index. The media type field is optional in OCI,
/// so the shape decides: an index has `manifests`, an image `config`.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<i64>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if probe.schema_version != Some(2) {
        return Err(format!(
            "unsupported manifest schema version {:?} (only 2 exists today; schema 1 images must be re-pushed)",
            probe.schema_version
        ));
    }
    let is_index = matches!(probe.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
        || (probe.manifests.is_some() && probe.config.is_none());
    if is_index {
        serde_json::from_slice(bytes)
            .map(Manifest::Index)
            .map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_slice(bytes)
            .map(Manifest::Image)
            .map_err(|e| format!("invalid image manifest: {e}"))
    }
}

/// The parts of an image config (config.md) the store uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub(crate) fn parse(bytes: &[u8]) -> Result<ImageConfig, String> {
        let c: ImageConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid image config: {e}"))?;
        if c.rootfs.kind != "layers" {
            return Err(format!(
                "invalid image config: rootfs type {:?}, expected \"layers\"",
                c.rootfs.kind
            ));
        }
        Ok(c)
    }

    pub(crate) fn diff_ids(&self) -> Result<Vec<Digest>, ImageError> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect()
    }

    pub(crate) fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }

    /// Whether this node can run the image; `Err` says why not.
    pub(crate) fn check_platform(&self, node: &Platform) -> Result<(), String> {
        // Configs written by some tools leave these empty; trust the index
        // choice then.
        if self.os.is_empty() && self.architecture.is_empty() {
            return Ok(());
        }
        if self.os == node.os && self.architecture == node.architecture {
            return Ok(());
        }
        Err(format!(
            "the image is built for {}, but this node is {}: pull an image built for {}",
            self.platform(),
            node,
            node
        ))
    }
}

/// Picks the manifest for `want` from an index's entries: same OS and
/// architecture, preferring the same variant, then an entry without a
/// variant, then any variant. Entries with no platform (attestations and
/// other artifacts) are never chosen. `None` if nothing fits.
pub fn select_platform<'a>(
    entries: impl IntoIterator<Item = (&'a str, Option<&'a Platform>)>,
    want: &Platform,
) -> Option<&'a str> {
    let mut best: Option<(u8, &str)> = None;
    for (digest, platform) in entries {
        let Some(p) = platform else { continue };
        if p.os != want.os || p.architecture != want.architecture {
            continue;
        }
        let rank = match (&p.variant, &want.variant) {
            (a, b) if a == b => 0,
            (None, _) => 1,
            _ => 2,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, digest));
        }
    }
    best.map(|(_, d)| d)
}

impl ImageIndex {
    /// The entry for `want`, or an error naming what the index offers.
    pub(crate) fn choose(&self, want: &Platform) -> Result<&Descriptor, String> {
        let chosen = select_platform(
            self.manifests
                .iter()
                .map(|m| (m.digest.as_str(), m.platform.as_ref())),
            want,
        );
        match chosen.and_then(|d| self.manifests.iter().find(|m| m.digest == d)) {
            Some(m) => Ok(m),
            None => {
                let offered: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(ToString::to_string))
                    .collect();
                Err(format!(
                    "the image has no variant for this node's platform {want} (it offers: {}): pull an image built for {want}",
                    if offered.is_empty() {
                        "none with a platform".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.into(),
            os: os.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn index_selects_this_platform() {
        let amd = p("linux", "amd64", None);
        let arm7 = p("linux", "arm", Some("v7"));
        let arm6 = p("linux", "arm", Some("v6"));
        let arm64 = p("linux", "arm64", Some("v8"));
        let arm64_plain = p("linux", "arm64", None);
        let win = p("windows", "amd64", None);
        let unknown = p("unknown", "unknown", None);
        let entries = vec![
            ("att", Some(&unknown)),
            ("win", Some(&win)),
            ("arm6", Some(&arm6)),
            ("arm7", Some(&arm7)),
            ("arm64-plain", Some(&arm64_plain)),
            ("arm64", Some(&arm64)),
            ("amd", Some(&amd)),
            ("none", None),
        ];
        assert_eq!(select_platform(entries.clone(), &amd), Some("amd"));
        assert_eq!(select_platform(entries.clone(), &arm7), Some("arm7"));
        // Exact variant beats no variant, which beats another variant.
        assert_eq!(select_platform(entries.clone(), &arm64), Some("arm64"));
        assert_eq!(
            select_platform(entries[..5].to_vec(), &arm64),
            Some("arm64-plain")
        );
        assert_eq!(
            select_platform(entries.clone(), &p("linux", "arm", Some("v5"))),
            Some("arm6")
        );
        assert_eq!(select_platform(entries, &p("linux", "s390x", None)), None);
    }

    #[test]
    fn parses_index_and_manifest_and_explains_missing_platform() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,
               "platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,
               "platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Ok(Manifest::Index(idx)) = parse_manifest(index) else {
            panic!("not an index")
        };
        assert_eq!(
            idx.choose(&p("linux", "amd64", None)).unwrap().digest,
            "sha256:bb"
        );
        let err = idx.choose(&p("linux", "riscv64", None)).unwrap_err();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");

        // A docker manifest list without mediaType is still an index.
        let list = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_manifest(list), Ok(Manifest::Index(_))));
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:cc","size":2},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:dd","size":3}]}"#;
        let Ok(Manifest::Image(m)) = parse_manifest(manifest) else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers.len(), 1);
        assert!(parse_manifest(br#"{"schemaVersion":1}"#).is_err());
    }

    #[test]
    fn config_platform_must_match_the_node() {
        let c = ImageConfig::parse(
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let err = c.check_platform(&p("linux", "amd64", None)).unwrap_err();
        assert!(err.contains("built for linux/arm64"), "{err}");
        assert!(c.check_platform(&p("linux", "arm64", Some("v8"))).is_ok());
    }
}
