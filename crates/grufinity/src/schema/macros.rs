//! The two declaration macros: [`choice_enum!`](crate::choice_enum) and [`settings!`](crate::settings).

/// Declares an enum whose values are lowercase words, usable as a [`Kind::Choice`] setting.
#[macro_export]
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[doc = $doc:literal])* $variant:ident = $word:literal ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name { $( $(#[doc = $doc])* #[serde(rename = $word)] $variant ),* }

        impl $crate::schema::Setting for $name {
            fn kind() -> $crate::schema::Kind { $crate::schema::Kind::Choice }
            fn choices() -> &'static [&'static str] { &[$($word),*] }
        }

        impl $name {
            /// The word of this value.
            pub fn word(self) -> &'static str {
                match self { $( Self::$variant => $word ),* }
            }

            /// The value of `word`, or a config error naming `key` and the choices.
            pub fn parse_word(word: &str, key: &str) -> $crate::error::Result<Self> {
                match word {
                    $( $word => Ok(Self::$variant), )*
                    other => Err($crate::error::Error::config(
                        key,
                        format!("must be one of {}, got {other:?}", [$($word),*].join(", ")),
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.word())
            }
        }
    };
}

/// Declares a config struct, one line per setting, and derives everything else from it (see
/// the [module docs](crate::schema)):
///
/// ```ignore
/// settings! {
///     /// What the struct is.
///     pub struct Example {
///         [section] model: ModelConfig;        // nested settings, flattened for users
///         /// One line of help.
///         dim: usize = 128; Bounds::at_least(1.0),
///     }
/// }
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( [section] $section:ident : $section_ty:ty ; )*
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ; $bounds:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( pub $section: $section_ty, )*
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $section: Default::default(), )* $( $field: $default, )* }
            }
        }

        impl $crate::schema::Schema for $name {
            fn keys() -> Vec<$crate::schema::Key> {
                let defaults = Self::default();
                let mut keys = Vec::new();
                $(
                    for mut key in <$section_ty as $crate::schema::Schema>::keys() {
                        key.section = Some(stringify!($section));
                        keys.push(key);
                    }
                )*
                $( keys.push($crate::schema::Key::new(stringify!($field), &defaults.$field, $bounds, &[$($doc),*])); )*
                keys
            }

            fn check(&self) -> $crate::error::Result<()> {
                $( $crate::schema::Schema::check(&self.$section)?; )*
                $(
                    let key = $crate::schema::Key::new(stringify!($field), &self.$field, $bounds, &[]);
                    key.check_number($crate::schema::Setting::number(&self.$field))?;
                )*
                Ok(())
            }
        }
    };
}
