//! `main.rs` and the settings code still report errors as `String` (`?` into
//! `Result<_, String>`). These conversions let them take the service's typed errors
//! unchanged; delete this file once they use `anyhow` or the typed errors themselves.

macro_rules! into_string {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for String {
            fn from(e: $t) -> String {
                e.to_string()
            }
        })*
    };
}

into_string!(
    super::ServiceError,
    crate::demo::DemoError,
    crate::sinks::redis::RedisOpError,
    crate::sinks::redis::SettingError,
    crate::sinks::alerts::AlertTargetError,
);
