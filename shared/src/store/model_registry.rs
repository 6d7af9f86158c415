//! The model registry: models by name, each either a file on a volume the
//! fleet shares (the registry keeps its path and SHA-256, so a worker can
//! check what it loads) or, for small ones, a blob in Redis.
//!
//! `<prefix>:{models}:model:<name>` is a hash of the fields below,
//! `<prefix>:{models}:model:<name>:blob` an uploaded file,
//! `<prefix>:{models}:index` the set of names: one hash tag, so that on a
//! Redis Cluster they share a slot. A (re-)registration replaces the record and its blob in one MULTI, and
//! bumps `version`, so a reader never sees half of one model and half of
//! another, and a worker holding version N knows when it is stale.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redis::Value;

use super::reply::{array, bytes, hash_map, int, reply_ok, text};
use super::{Store, StoreError};
use crate::config::Config;
use crate::model_format::transformer::{
    self as transformer_format, Pooling, Positions, TransformerFormatError, TransformerModel,
    TransformerShape, is_transformer,
};
use crate::model_format::{
    self as mlp_format, Model, ModelError, ModelFile, ModelShape, sha256_hex,
};
use crate::task::Class;

/// Longest model name.
pub const MAX_MODEL_NAME: usize = 64;

/// The hash fields a registration writes (an MLP's record has no
/// `config`, a transformer's no `layers`); `version` is kept and bumped.
const FIELDS: [&str; 14] = [
    "name",
    "source",
    "path",
    "bytes",
    "parameter_bytes",
    "sha256",
    "arch",
    "format",
    "format_version",
    "layers",
    "config",
    "activation",
    "class",
    "registered_at_ms",
];

/// A registered model's architecture, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelArch {
    /// A multi-layer perceptron (`tandem-mlp` files).
    Mlp(ModelShape),
    /// The encoder-only price-prediction transformer (`tandem-transformer`
    /// files).
    Transformer(TransformerShape),
}

impl ModelArch {
    /// The `arch` field: `mlp` or `transformer`.
    pub fn name(&self) -> &'static str {
        match self {
            ModelArch::Mlp(_) => "mlp",
            ModelArch::Transformer(_) => "transformer",
        }
    }

    /// The file format's tag and version (the `format` and
    /// `format_version` fields).
    pub fn format(&self) -> (&'static str, &'static str) {
        match self {
            ModelArch::Mlp(_) => (mlp_format::FORMAT, mlp_format::VERSION),
            ModelArch::Transformer(_) => (transformer_format::FORMAT, transformer_format::VERSION),
        }
    }

    /// What the parameters occupy on a device (f32).
    pub fn parameter_bytes(&self) -> u64 {
        match self {
            ModelArch::Mlp(shape) => shape.parameter_bytes(),
            ModelArch::Transformer(shape) => shape.parameter_bytes(),
        }
    }

    /// Heavy when the parameters are over `threshold_bytes`, else light.
    pub fn class(&self, threshold_bytes: u64) -> Class {
        match self {
            ModelArch::Mlp(shape) => shape.class(threshold_bytes),
            ModelArch::Transformer(shape) => shape.class(threshold_bytes),
        }
    }

    /// The activation between layers: `relu`, `tanh` or `gelu-tanh`.
    pub fn activation(&self) -> String {
        match self {
            ModelArch::Mlp(shape) => shape.activation.to_string(),
            ModelArch::Transformer(_) => transformer_format::ACTIVATION.to_owned(),
        }
    }

    /// The architecture in one line: an MLP's widths (`16,64,1`), a
    /// transformer's `config` field.
    pub fn describe(&self) -> String {
        match self {
            ModelArch::Mlp(shape) => shape.sizes_text(),
            ModelArch::Transformer(shape) => config_text(shape),
        }
    }
}

/// A transformer's `config` field: `features=32 window=128 d_model=256
/// heads=8 layers=4 ff=1024 outputs=1 causal=true pooling=last
/// positions=learned`.
pub fn config_text(shape: &TransformerShape) -> String {
    format!(
        "features={} window={} d_model={} heads={} layers={} ff={} outputs={} causal={} pooling={} positions={}",
        shape.features,
        shape.window,
        shape.d_model,
        shape.heads,
        shape.layers,
        shape.ff,
        shape.outputs,
        shape.causal,
        shape.pooling,
        shape.positions
    )
}

/// Reads [`config_text`] back: every key once, none unknown, the shape
/// within the format's bounds; the error names the key and the problem.
pub fn parse_config_text(text: &str) -> Result<TransformerShape, String> {
    let mut values: HashMap<&str, &str> = HashMap::new();
    for pair in text.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if values.insert(key, value).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
    }
    let mut take = |key: &str| {
        values
            .remove(key)
            .ok_or_else(|| format!("`{key}` is missing"))
    };
    let mut number = |key: &str| -> Result<usize, String> {
        let value = take(key)?;
        value
            .parse()
            .map_err(|_| format!("`{key}` is {value:?}, not a whole number"))
    };
    let features = number("features")?;
    let window = number("window")?;
    let d_model = number("d_model")?;
    let heads = number("heads")?;
    let layers = number("layers")?;
    let ff = number("ff")?;
    let outputs = number("outputs")?;
    let causal = match take("causal")? {
        "true" => true,
        "false" => false,
        other => return Err(format!("`causal` is {other:?}, not true or false")),
    };
    let pooling: Pooling = take("pooling")?.parse().map_err(|e| format!("{e}"))?;
    let positions: Positions = take("positions")?.parse().map_err(|e| format!("{e}"))?;
    if let Some(key) = values.keys().min() {
        return Err(format!("`{key}` is not a transformer setting"));
    }
    let shape = TransformerShape {
        features,
        window,
        d_model,
        heads,
        layers,
        ff,
        outputs,
        causal,
        pooling,
        positions,
    };
    shape.check().map_err(|e| e.to_string())?;
    Ok(shape)
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // Causes are fields not named `source`, so the message carries them
    // once, whether printed plainly or as an error chain.
    #[error("{origin} is not a valid model: {error}")]
    Invalid { origin: String, error: ModelError },
    #[error("{origin} is not a valid transformer: {error}")]
    InvalidTransformer {
        origin: String,
        error: TransformerFormatError,
    },
    #[error(
        "invalid model name {0:?}: 1 to {MAX_MODEL_NAME} characters of letters, digits, '_', '.', '-'"
    )]
    BadName(String),
    #[error(
        "{bytes} bytes is over the upload limit of {limit} (max_model_upload_bytes); register it by path instead"
    )]
    UploadTooLarge { bytes: u64, limit: u64 },
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("model {name}: the registry record is damaged: {detail}")]
    Corrupt { name: String, detail: String },
    #[error("model {name}: the file's SHA-256 is {found}, the registry says {expected}")]
    HashMismatch {
        name: String,
        expected: String,
        found: String,
    },
}

/// Where a registered model's file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file on a volume every worker mounts at the same path.
    Path(PathBuf),
    /// The blob key next to the record.
    Redis,
}

impl ModelSource {
    /// The `source` field: `path` or `redis`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelSource::Path(_) => "path",
            ModelSource::Redis => "redis",
        }
    }
}

/// A registered model, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub source: ModelSource,
    /// The file's size.
    pub bytes: u64,
    /// What the parameters occupy on a device (f32), which decides the
    /// class and what a worker reserves for the model.
    pub parameter_bytes: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// The architecture (a record without `arch`, from before transformers,
    /// is an MLP).
    pub arch: ModelArch,
    pub class: Class,
    pub registered_at_ms: u64,
    /// 1 on first registration, one more on each re-registration.
    pub version: u64,
}

/// The settings that registration follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPolicy {
    /// A model whose parameters are over this is heavy, else light.
    pub heavy_threshold_bytes: u64,
    /// Largest file `upload_model` stores in Redis.
    pub max_upload_bytes: usize,
}

impl From<&Config> for ModelPolicy {
    fn from(config: &Config) -> Self {
        Self {
            heavy_threshold_bytes: config.model_heavy_threshold_bytes,
            max_upload_bytes: config.max_model_upload_bytes,
        }
    }
}

/// Checks a model name: 1-64 characters of `[A-Za-z0-9_.-]`, so it is safe
/// in a key and on a command line.
pub fn check_model_name(name: &str) -> Result<(), ModelStoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ModelStoreError::BadName(name.chars().take(80).collect()))
    }
}

/// What a registration writes, before Redis assigns the version.
struct Registration {
    name: String,
    source: ModelSource,
    bytes: u64,
    sha256: String,
    arch: ModelArch,
    class: Class,
    registered_at_ms: u64,
}

impl Registration {
    fn new(
        name: &str,
        source: ModelSource,
        bytes: u64,
        sha256: String,
        arch: ModelArch,
        policy: &ModelPolicy,
    ) -> Self {
        let class = arch.class(policy.heavy_threshold_bytes);
        let registered_at_ms = crate::clock::now_ms();
        Self {
            name: name.to_owned(),
            source,
            bytes,
            sha256,
            arch,
            class,
            registered_at_ms,
        }
    }

    /// The hash fields, in [`FIELDS`] order: an MLP's `layers`, a
    /// transformer's `config`.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let path = match &self.source {
            ModelSource::Path(path) => path.to_string_lossy().into_owned(),
            ModelSource::Redis => String::new(),
        };
        let (format, format_version) = self.arch.format();
        let shape = match &self.arch {
            ModelArch::Mlp(shape) => ("layers", shape.sizes_text()),
            ModelArch::Transformer(shape) => ("config", config_text(shape)),
        };
        vec![
            ("name", self.name.clone()),
            ("source", self.source.as_str().to_owned()),
            ("path", path),
            ("bytes", self.bytes.to_string()),
            ("parameter_bytes", self.arch.parameter_bytes().to_string()),
            ("sha256", self.sha256.clone()),
            ("arch", self.arch.name().to_owned()),
            ("format", format.to_owned()),
            ("format_version", format_version.to_owned()),
            shape,
            ("activation", self.arch.activation()),
            ("class", self.class.to_string()),
            ("registered_at_ms", self.registered_at_ms.to_string()),
        ]
    }

    fn into_info(self, version: u64) -> ModelInfo {
        ModelInfo {
            parameter_bytes: self.arch.parameter_bytes(),
            name: self.name,
            source: self.source,
            bytes: self.bytes,
            sha256: self.sha256,
            arch: self.arch,
            class: self.class,
            registered_at_ms: self.registered_at_ms,
            version,
        }
    }
}

impl Store {
    /// Registers the model file at `path` (made absolute) under `name`,
    /// after checking the whole file. Replaces any model of that name.
    pub async fn register_model_path(
        &self,
        name: &str,
        path: &Path,
        policy: &ModelPolicy,
    ) -> Result<ModelInfo, ModelStoreError> {
        check_model_name(name)?;
        let path = std::fs::canonicalize(path).map_err(|error| ModelStoreError::Io {
            path: path.to_owned(),
            error,
        })?;
        // Files may be gigabytes: scan off the runtime's thread.
        let scan_path = path.clone();
        let scanned = tokio::task::spawn_blocking(move || scan_file(&scan_path))
            .await
            .map_err(|e| ModelStoreError::Io {
                path: path.clone(),
                error: std::io::Error::other(e.to_string()),
            })?;
        let (bytes, sha256, arch) = scanned?;
        let registration =
            Registration::new(name, ModelSource::Path(path), bytes, sha256, arch, policy);
        self.write_model(registration, None).await
    }

    /// Stores `file` in Redis under `name`, after checking it. Replaces any
    /// model of that name.
    pub async fn upload_model(
        &self,
        name: &str,
        file: &[u8],
        policy: &ModelPolicy,
    ) -> Result<ModelInfo, ModelStoreError> {
        check_model_name(name)?;
        if file.len() > policy.max_upload_bytes {
            return Err(ModelStoreError::UploadTooLarge {
                bytes: file.len() as u64,
                limit: policy.max_upload_bytes as u64,
            });
        }
        let origin = || format!("the upload for {name}");
        let arch = if is_transformer(file) {
            let model = TransformerModel::decode(file).map_err(|error| {
                ModelStoreError::InvalidTransformer {
                    origin: origin(),
                    error,
                }
            })?;
            ModelArch::Transformer(model.shape)
        } else {
            let model = Model::decode(file).map_err(|error| ModelStoreError::Invalid {
                origin: origin(),
                error,
            })?;
            ModelArch::Mlp(model.shape())
        };
        let registration = Registration::new(
            name,
            ModelSource::Redis,
            file.len() as u64,
            sha256_hex(file),
            arch,
            policy,
        );
        self.write_model(registration, Some(file)).await
    }

    /// Replaces the record (and the blob) in one MULTI and bumps the
    /// version; a path model drops any blob an earlier upload left.
    async fn write_model(
        &self,
        registration: Registration,
        blob: Option<&[u8]>,
    ) -> Result<ModelInfo, ModelStoreError> {
        let key = self.keys.model(&registration.name);
        let blob_key = self.keys.model_blob(&registration.name);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HDEL").arg(&key).arg(&FIELDS[..]).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (field, value) in registration.pairs() {
            hset.arg(field).arg(value);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("HINCRBY").arg(&key).arg("version").arg(1);
        pipe.cmd("SADD")
            .arg(self.keys.models())
            .arg(&registration.name)
            .ignore();
        match blob {
            Some(bytes) => pipe.cmd("SET").arg(&blob_key).arg(bytes).ignore(),
            None => pipe.cmd("DEL").arg(&blob_key).ignore(),
        };
        let mut conn = self.connection();
        let reply: Value = pipe
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let version = array(reply, "model MULTI")?
            .into_iter()
            .next()
            .map(|v| int(reply_ok(v)?, "HINCRBY"))
            .transpose()?
            .unwrap_or(0);
        Ok(registration.into_info(version as u64))
    }

    /// The record of one model, or `None` when none has that name.
    pub async fn model_info(&self, name: &str) -> Result<Option<ModelInfo>, ModelStoreError> {
        check_model_name(name)?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.model(name));
        let map = hash_map(self.single(cmd).await?, "HGETALL")?;
        if map.is_empty() {
            return Ok(None);
        }
        parse_info(name, &map).map(Some)
    }

    /// An uploaded model's file, or `None` when it has none (unknown, or
    /// registered by path).
    pub async fn model_blob(&self, name: &str) -> Result<Option<Vec<u8>>, ModelStoreError> {
        check_model_name(name)?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.model_blob(name));
        match self.single(cmd).await? {
            Value::Nil => Ok(None),
            other => Ok(Some(bytes(other, "GET")?)),
        }
    }

    /// A model's record and its file, from the blob or the path, checked
    /// against the recorded SHA-256; `None` when no model has that name.
    pub async fn load_model_file(
        &self,
        name: &str,
    ) -> Result<Option<(ModelInfo, Vec<u8>)>, ModelStoreError> {
        let Some(info) = self.model_info(name).await? else {
            return Ok(None);
        };
        let file = match &info.source {
            ModelSource::Redis => {
                self.model_blob(name)
                    .await?
                    .ok_or_else(|| ModelStoreError::Corrupt {
                        name: name.to_owned(),
                        detail: "source is redis but the blob is missing".into(),
                    })?
            }
            ModelSource::Path(path) => {
                let read_path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(read_path))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|read| read)
                    .map_err(|error| ModelStoreError::Io {
                        path: path.clone(),
                        error,
                    })?
            }
        };
        let found = sha256_hex(&file);
        if found != info.sha256 {
            return Err(ModelStoreError::HashMismatch {
                name: name.to_owned(),
                expected: info.sha256,
                found,
            });
        }
        Ok(Some((info, file)))
    }

    /// Every registered model, by name. Names whose record is gone are
    /// dropped from the set on the way.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ModelStoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.models());
        let mut names: Vec<String> = array(self.single(members).await?, "SMEMBERS")?
            .into_iter()
            .map(|v| text(v, "SMEMBERS"))
            .collect::<Result<_, _>>()?;
        names.sort();
        let cmds: Vec<redis::Cmd> = names
            .iter()
            .map(|name| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.model(name));
                cmd
            })
            .collect();
        let mut models = Vec::with_capacity(names.len());
        let mut gone = Vec::new();
        for (name, reply) in names.iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL")?;
            if map.is_empty() {
                gone.push(name.clone());
            } else {
                models.push(parse_info(name, &map)?);
            }
        }
        if !gone.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.models()).arg(&gone);
            self.single(srem).await?;
        }
        Ok(models)
    }

    /// Unregisters a model and deletes its blob (never a path model's
    /// file). False when no model had that name.
    pub async fn remove_model(&self, name: &str) -> Result<bool, ModelStoreError> {
        check_model_name(name)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.keys.model(name))
            .cmd("DEL")
            .arg(self.keys.model_blob(name))
            .ignore()
            .cmd("SREM")
            .arg(self.keys.models())
            .arg(name)
            .ignore();
        let mut conn = self.connection();
        let reply: Value = pipe
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let deleted = array(reply, "model MULTI")?
            .into_iter()
            .next()
            .map(|v| int(reply_ok(v)?, "DEL"))
            .transpose()?
            .unwrap_or(0);
        Ok(deleted > 0)
    }
}

/// Checks and hashes the model file at `path`: a transformer (its
/// header's `format` says so) is read whole and decoded, an MLP streamed
/// through [`ModelFile::scan`]. Returns its size, SHA-256 and architecture.
fn scan_file(path: &Path) -> Result<(u64, String, ModelArch), ModelStoreError> {
    let io = |error| ModelStoreError::Io {
        path: path.to_owned(),
        error,
    };
    if header_format(path).map_err(io)?.as_deref() == Some(transformer_format::FORMAT) {
        let file = std::fs::read(path).map_err(io)?;
        let model = TransformerModel::decode(&file).map_err(|error| {
            ModelStoreError::InvalidTransformer {
                origin: path.display().to_string(),
                error,
            }
        })?;
        return Ok((
            file.len() as u64,
            sha256_hex(&file),
            ModelArch::Transformer(model.shape),
        ));
    }
    let file = ModelFile::scan(path).map_err(|error| invalid(path, error))?;
    Ok((file.bytes, file.sha256, ModelArch::Mlp(file.shape)))
}

/// The `format` in a safetensors file's `__metadata__`, reading only its
/// header; `None` when the file is too short, the header is not JSON or
/// has no format (the MLP scan then names what is wrong).
fn header_format(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut prefix = [0u8; 8];
    if size < 8 {
        return Ok(None);
    }
    file.read_exact(&mut prefix)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > size - 8 || header_len > 100 << 20 {
        return Ok(None);
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let format = serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|v| {
            v.get("__metadata__")?
                .get("format")?
                .as_str()
                .map(str::to_owned)
        });
    Ok(format)
}

fn invalid(path: &Path, error: ModelError) -> ModelStoreError {
    match error {
        // An unreadable file is not an invalid one.
        ModelError::Io { path, error } => ModelStoreError::Io { path, error },
        error => ModelStoreError::Invalid {
            origin: path.display().to_string(),
            error,
        },
    }
}

/// A record from its hash fields; a missing or malformed field is
/// [`ModelStoreError::Corrupt`].
fn parse_info(name: &str, map: &HashMap<Vec<u8>, Vec<u8>>) -> Result<ModelInfo, ModelStoreError> {
    let corrupt = |detail: String| ModelStoreError::Corrupt {
        name: name.to_owned(),
        detail,
    };
    let field = |field: &str| -> Result<String, ModelStoreError> {
        let raw = map
            .get(field.as_bytes())
            .ok_or_else(|| corrupt(format!("no `{field}` field")))?;
        String::from_utf8(raw.clone()).map_err(|_| corrupt(format!("`{field}` is not UTF-8")))
    };
    let number = |name: &str| -> Result<u64, ModelStoreError> {
        let value = field(name)?;
        value
            .parse()
            .map_err(|_| corrupt(format!("`{name}` is {value:?}, not a number")))
    };
    let source = match field("source")?.as_str() {
        "path" => ModelSource::Path(PathBuf::from(field("path")?)),
        "redis" => ModelSource::Redis,
        other => return Err(corrupt(format!("`source` is {other:?}"))),
    };
    // A record from before transformers has no `arch`: an MLP.
    let arch = match map.get("arch".as_bytes()) {
        None => "mlp".to_owned(),
        Some(_) => field("arch")?,
    };
    let arch = match arch.as_str() {
        "mlp" => {
            let sizes: Vec<usize> = field("layers")?
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("`layers` is not a list of widths".into()))?;
            let activation = field("activation")?
                .parse()
                .map_err(|e| corrupt(format!("{e}")))?;
            ModelArch::Mlp(ModelShape::new(&sizes, activation).map_err(|e| corrupt(e.to_string()))?)
        }
        "transformer" => ModelArch::Transformer(
            parse_config_text(&field("config")?).map_err(|e| corrupt(format!("`config`: {e}")))?,
        ),
        other => {
            return Err(corrupt(format!(
                "`arch` is {other:?}, not mlp or transformer"
            )));
        }
    };
    let class = field("class")?
        .parse()
        .map_err(|e| corrupt(format!("{e}")))?;
    Ok(ModelInfo {
        name: field("name")?,
        source,
        bytes: number("bytes")?,
        parameter_bytes: number("parameter_bytes")?,
        sha256: field("sha256")?,
        arch,
        class,
        registered_at_ms: number("registered_at_ms")?,
        version: number("version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_key_safe() {
        for good in ["mlp", "price-v1.2_final", &"a".repeat(64)] {
            assert!(check_model_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a:b", "a b", "a/b", "{x}", "é", &"a".repeat(65)] {
            assert!(
                matches!(check_model_name(bad), Err(ModelStoreError::BadName(_))),
                "{bad}"
            );
        }
    }

    fn record(pairs: &[(&str, &str)]) -> HashMap<Vec<u8>, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn records_read_back_and_damage_is_named() {
        let shape = ModelShape::new(&[16, 64, 1], crate::model_format::Activation::Relu).unwrap();
        let registration = Registration {
            name: "m".into(),
            source: ModelSource::Path("/models/m.safetensors".into()),
            bytes: 5000,
            sha256: "ab".repeat(32),
            class: Class::Light,
            registered_at_ms: 1_700_000_000_000,
            arch: ModelArch::Mlp(shape),
        };
        let mut pairs: Vec<(&str, String)> = registration.pairs();
        pairs.push(("version", "3".into()));
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let info = parse_info("m", &record(&borrowed)).unwrap();
        assert_eq!(info, registration.into_info(3));
        assert_eq!(info.parameter_bytes, 4 * (17 * 64 + 65 + 32));

        let mut damaged = borrowed.clone();
        damaged.retain(|(k, _)| *k != "sha256");
        let err = parse_info("m", &record(&damaged)).unwrap_err().to_string();
        assert_eq!(
            err,
            "model m: the registry record is damaged: no `sha256` field"
        );
        let mut damaged = borrowed;
        damaged.push(("layers", "16,x"));
        let err = parse_info("m", &record(&damaged)).unwrap_err().to_string();
        assert_eq!(
            err,
            "model m: the registry record is damaged: `layers` is not a list of widths"
        );
    }

    #[test]
    fn records_from_before_transformers_read_as_mlps() {
        // A 2.8 record: no arch, format, format_version or config.
        let old = [
            ("name", "old"),
            ("source", "redis"),
            ("path", ""),
            ("bytes", "900"),
            ("parameter_bytes", "420"),
            ("sha256", "cd"),
            ("layers", "4,8,2"),
            ("activation", "tanh"),
            ("class", "light"),
            ("registered_at_ms", "1"),
            ("version", "2"),
        ];
        let info = parse_info("old", &record(&old)).unwrap();
        let ModelArch::Mlp(shape) = info.arch else {
            panic!("{info:?}");
        };
        assert_eq!(shape.sizes_text(), "4,8,2");
        assert_eq!(info.version, 2);
    }

    #[test]
    fn transformer_records_read_back_and_a_bad_config_is_named() {
        let shape = TransformerShape {
            features: 32,
            window: 128,
            d_model: 64,
            heads: 4,
            layers: 2,
            ff: 256,
            outputs: 1,
            causal: true,
            pooling: Pooling::Last,
            positions: Positions::Sinusoidal,
        };
        let registration = Registration {
            name: "xf".into(),
            source: ModelSource::Redis,
            bytes: 12_345,
            sha256: "ef".repeat(32),
            class: Class::Heavy,
            registered_at_ms: 5,
            arch: ModelArch::Transformer(shape),
        };
        let mut pairs = registration.pairs();
        assert!(pairs.iter().all(|(k, _)| *k != "layers"));
        assert!(pairs.contains(&("format", "tandem-transformer".into())));
        assert!(pairs.contains(&("format_version", "1".into())));
        assert!(
            pairs.contains(&(
                "config",
                "features=32 window=128 d_model=64 heads=4 layers=2 ff=256 outputs=1 \
             causal=true pooling=last positions=sinusoidal"
                    .into()
            ))
        );
        pairs.push(("version", "1".into()));
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let info = parse_info("xf", &record(&borrowed)).unwrap();
        assert_eq!(info, registration.into_info(1));
        assert_eq!(info.parameter_bytes, shape.parameter_bytes());

        for (config, expect) in [
            ("features=32", "`window` is missing"),
            (
                "features=32 window=128 d_model=64 heads=5 layers=2 ff=256 outputs=1 causal=true pooling=last positions=learned",
                "5 heads do not divide d_model 64",
            ),
            (
                "features=x window=128 d_model=64 heads=4 layers=2 ff=256 outputs=1 causal=true pooling=last positions=learned",
                "`features` is \"x\", not a whole number",
            ),
            (
                "features=32 window=128 d_model=64 heads=4 layers=2 ff=256 outputs=1 causal=true pooling=last positions=learned dropout=1",
                "`dropout` is not a transformer setting",
            ),
        ] {
            let mut damaged = borrowed.clone();
            damaged.push(("config", config));
            let err = parse_info("xf", &record(&damaged)).unwrap_err().to_string();
            assert!(
                err.starts_with("model xf: the registry record is damaged: `config`: ")
                    && err.contains(expect),
                "{err}"
            );
        }
        let mut damaged = borrowed;
        damaged.push(("arch", "rnn"));
        let err = parse_info("xf", &record(&damaged)).unwrap_err().to_string();
        assert!(
            err.contains("`arch` is \"rnn\", not mlp or transformer"),
            "{err}"
        );
    }
}
