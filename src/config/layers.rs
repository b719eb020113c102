//! The three layers of a configuration — the TOML file, `TOKENWATCH_…` environment
//! variables, command-line flags — merged into one tree, in that order (a later layer wins),
//! then deserialized once into the typed [`super::Config`].
//!
//! Every key remembers where it was set ([`Origin`]): the file and line, the variable, or the
//! flag. A value that does not fit its key fails during that one deserialization, whose error
//! carries the key's path (`serde_path_to_error`), and the path finds the origin; so every
//! message names the place to fix without anything reading an error message back.
//!
//! Keys are checked flags first, then the environment's, then the file's from top to bottom:
//! the first error reported is in the layer that overrides the others (an unknown variable
//! before a bad file value that it may have meant to replace), and a file reads in order.
//!
//! Values from the environment and from flags are text until the schema asks for a type: a
//! key that takes a number parses the text as one, a list splits it at commas, and a string
//! key keeps it as written (`TOKENWATCH_GROUP=42` is the group `"42"`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, IntoDeserializer, Unexpected, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// Where a key was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the config file.
    File { path: PathBuf, line: usize },
    /// An environment variable (`TOKENWATCH_ENGINE__LATENESS`).
    Env(String),
    /// A command-line flag (`--metrics-addr`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(var) | Origin::Flag(var) => f.write_str(var),
        }
    }
}

/// The value of a flag, as it goes into the tree.
pub enum FlagValue {
    /// One value, typed by its key like an environment variable's.
    Text(String),
    /// A repeatable flag's values.
    List(Vec<String>),
}

/// Where every key of a loaded configuration was set; keys left at their default have none.
#[derive(Debug, Default, Clone)]
pub struct Origins(BTreeMap<Vec<String>, Origin>);

impl Origins {
    /// Where `key` (dotted: `engine.lateness`) was set, or the table holding it.
    pub fn of(&self, key: &str) -> Option<&Origin> {
        let path: Vec<String> = key.split('.').map(String::from).collect();
        self.of_path(&path)
    }

    fn of_path(&self, path: &[String]) -> Option<&Origin> {
        (0..=path.len()).rev().find_map(|n| self.0.get(&path[..n]))
    }

    /// `key` has a value that cannot work.
    pub fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.of(key).cloned(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// Another module refused the value of `key`, with a message that names the key.
    pub fn refused(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Refused {
            origin: self.of(key).cloned(),
            message: message.to_string(),
        }
    }
}

/// A configuration being assembled: the merged tree and the origin of each key in it. Add
/// the layers in their order — [`Layers::file`] (or [`Layers::toml`]), [`Layers::env`],
/// [`Layers::flag`] — then [`Layers::load`].
#[derive(Debug, Default)]
pub struct Layers {
    root: Table,
    origins: Origins,
}

/// A table's keys, in the order they are checked.
type Table = Vec<(String, Node)>;

/// A key's value in the merged tree.
#[derive(Debug, Clone)]
enum Node {
    Table(Table),
    /// A value the file typed.
    Toml(toml::Value),
    /// A value from the environment or a flag, typed when the schema asks.
    Text(String),
}

impl Layers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the config file at `path`.
    pub fn file(self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        self.toml(&text, Some(path))
    }

    /// Adds a TOML document; with `path`, its keys remember their lines in that file.
    pub fn toml(mut self, text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let name = path.unwrap_or(Path::new("<config>"));
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: name.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().to_string(),
        })?;
        if let Some(path) = path {
            let spans = toml::from_str::<KeySpans>(text).map(|k| k.0).unwrap_or_default();
            for (key, span) in spans {
                let line = line_of(span.start);
                let origin = Origin::File {
                    path: path.to_path_buf(),
                    line,
                };
                self.origins.0.insert(key, origin);
            }
        }
        for (key, value) in table {
            put(&mut self.root, key, Node::from(value));
        }
        Ok(self)
    }

    /// Adds the `TOKENWATCH_…` variables among `vars` (others are not ours and are skipped).
    ///
    /// `TOKENWATCH_KEY` sets a top-level key, and every `__` goes one table down
    /// (`TOKENWATCH_ENGINE__LATENESS`, `TOKENWATCH_INPUT__MAPPING__TOKEN`); in the `[kafka]`
    /// table the rest of the name is the librdkafka property with dots as underscores
    /// (`TOKENWATCH_KAFKA__SECURITY_PROTOCOL`). A variable that names no key is an error when
    /// the configuration is loaded, naming the variable.
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (var, value) in vars {
            let path = env_path(&var[ENV_PREFIX.len()..]).map_err(|problem| ConfigError::Variable {
                var: var.clone(),
                problem: problem.into(),
            })?;
            self.set(path, Node::Text(value), Origin::Env(var))?;
        }
        Ok(self)
    }

    /// Adds a flag's value at `key` (dotted: `input.format`).
    pub fn flag(mut self, key: &str, flag: &str, value: FlagValue) -> Result<Self, ConfigError> {
        let node = match value {
            FlagValue::Text(s) => Node::Text(s),
            FlagValue::List(v) => Node::Toml(toml::Value::Array(v.into_iter().map(toml::Value::String).collect())),
        };
        let path = key.split('.').map(String::from).collect();
        self.set(path, node, Origin::Flag(flag.to_string()))?;
        Ok(self)
    }

    /// Sets `path` to `node`, creating the tables above it; those remember the first origin
    /// that needed them.
    fn set(&mut self, path: Vec<String>, node: Node, origin: Origin) -> Result<(), ConfigError> {
        let Some((last, parents)) = path.split_last() else {
            return Err(ConfigError::Refused {
                origin: Some(origin),
                message: "no key".into(),
            });
        };
        let mut table = &mut self.root;
        for (i, k) in parents.iter().enumerate() {
            self.origins
                .0
                .entry(path[..=i].to_vec())
                .or_insert_with(|| origin.clone());
            let at = match table.iter().position(|(name, _)| name == k) {
                Some(at) => at,
                None => put(table, k.clone(), Node::Table(Table::new())),
            };
            table = match &mut table[at].1 {
                Node::Table(t) => t,
                _ => {
                    return Err(ConfigError::Invalid {
                        origin: Some(origin),
                        key: path.join("."),
                        problem: format!("`{}` is not a table", parents[..=i].join(".")),
                    })
                }
            };
        }
        put(table, last.clone(), node);
        self.origins.0.insert(path, origin);
        Ok(())
    }

    /// Deserializes the merged tree into `T`, once; an error names the key and its origin.
    pub fn load<T: DeserializeOwned>(mut self) -> Result<(T, Origins), ConfigError> {
        order(&mut self.root, &mut Vec::new(), &self.origins);
        match serde_path_to_error::deserialize(Node::Table(self.root)) {
            Ok(value) => Ok((value, self.origins)),
            Err(e) => {
                let path: Vec<String> = e
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                Err(ConfigError::Invalid {
                    origin: self.origins.of_path(&path).cloned(),
                    key: path.join("."),
                    problem: e.inner().message().to_string(),
                })
            }
        }
    }
}

const ENV_PREFIX: &str = "TOKENWATCH_";

/// Sets `key` in `table`, in place of any value it had; returns its index.
fn put(table: &mut Table, key: String, node: Node) -> usize {
    match table.iter().position(|(name, _)| *name == key) {
        Some(at) => {
            table[at].1 = node;
            at
        }
        None => {
            table.push((key, node));
            table.len() - 1
        }
    }
}

/// Puts every table's keys in the order they are checked: flags, environment, file lines; a
/// table goes where its first key goes. Returns the rank of the table's first key.
fn order(table: &mut Table, path: &mut Vec<String>, origins: &Origins) -> (u8, usize) {
    let mut ranked: Vec<((u8, usize), (String, Node))> = std::mem::take(table)
        .into_iter()
        .map(|(key, mut node)| {
            path.push(key);
            let own = match origins.0.get(path.as_slice()) {
                Some(Origin::Flag(_)) => (0, 0),
                Some(Origin::Env(_)) => (1, 0),
                Some(Origin::File { line, .. }) => (2, *line),
                None => (3, 0),
            };
            let rank = match &mut node {
                Node::Table(t) => own.min(order(t, path, origins)),
                _ => own,
            };
            let key = path.pop().unwrap_or_default();
            (rank, (key, node))
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    let first = ranked.first().map_or((3, 0), |(rank, _)| *rank);
    table.extend(ranked.into_iter().map(|(_, entry)| entry));
    first
}

/// `ENGINE__LATENESS` → `engine.lateness`; `KAFKA__FETCH_MIN_BYTES` → `kafka."fetch.min.bytes"`.
fn env_path(rest: &str) -> Result<Vec<String>, &'static str> {
    let lower = rest.to_ascii_lowercase();
    let path: Vec<String> = match lower.strip_prefix("kafka__") {
        Some(prop) => vec!["kafka".into(), prop.replace('_', ".")],
        None => lower.split("__").map(String::from).collect(),
    };
    if path.iter().any(String::is_empty) {
        return Err("an empty key (nothing after TOKENWATCH_, or between `__` separators)");
    }
    Ok(path)
}

impl From<toml::Value> for Node {
    fn from(v: toml::Value) -> Self {
        match v {
            toml::Value::Table(t) => Node::Table(t.into_iter().map(|(k, v)| (k, Node::from(v))).collect()),
            other => Node::Toml(other),
        }
    }
}

type Error = toml::de::Error;

impl<'de> IntoDeserializer<'de, Error> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

/// Text parsed as the number a key takes; `invalid type` (naming the text) when it is none.
macro_rules! parse_text {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            match self {
                Node::Text(s) => {
                    if let Ok(n) = s.trim().parse::<u64>() {
                        v.visit_u64(n)
                    } else if let Ok(n) = s.trim().parse::<i64>() {
                        v.visit_i64(n)
                    } else if let Ok(x) = s.trim().parse::<f64>() {
                        v.visit_f64(x)
                    } else {
                        Err(de::Error::invalid_type(Unexpected::Str(&s), &v))
                    }
                }
                other => other.deserialize_any(v),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self {
            Node::Table(t) => v.visit_map(de::value::MapDeserializer::new(t.into_iter())),
            Node::Toml(t) => t.deserialize_any(v),
            Node::Text(s) => v.visit_string(s),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self {
            Node::Text(s) => match s.trim() {
                "true" => v.visit_bool(true),
                "false" => v.visit_bool(false),
                _ => Err(de::Error::invalid_type(Unexpected::Str(&s), &v)),
            },
            other => other.deserialize_any(v),
        }
    }

    parse_text! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    /// A list from text is comma-separated: `TOKENWATCH_TOPICS=a,b`.
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self {
            Node::Text(s) => {
                let items: Vec<Node> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Node::Text(s.to_string()))
                    .collect();
                v.visit_seq(de::value::SeqDeserializer::new(items.into_iter()))
            }
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Text(s) => v.visit_enum(s.into_deserializer()),
            Node::Toml(t) => t.deserialize_enum(name, variants, v),
            table @ Node::Table(_) => table.deserialize_any(v),
        }
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// Every key of a TOML document as a path, with the span of its (last) name.
struct KeySpans(Vec<(Vec<String>, std::ops::Range<usize>)>);

impl<'de> Deserialize<'de> for KeySpans {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = KeySpans;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<KeySpans, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<toml::Spanned<String>>()? {
                    let inner: KeySpans = m.next_value()?;
                    let key = k.get_ref().clone();
                    out.push((vec![key.clone()], k.span()));
                    out.extend(inner.0.into_iter().map(|(mut path, s)| {
                        path.insert(0, key.clone());
                        (path, s)
                    }));
                }
                Ok(KeySpans(out))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<KeySpans, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(KeySpans(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
        }
        d.deserialize_any(Visit)
    }
}
