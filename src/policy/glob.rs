use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A pattern that is not a valid glob, with the pattern so the user can find it.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {source}")]
pub struct GlobError {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// A list of shell-style globs (`*`, `?`, `[a-z]`) matched as a whole against a string.
///
/// `*` does not cross `/`, so `ci/*` names every ServiceAccount of namespace `ci` and no more.
#[derive(Debug, Clone, Default)]
pub struct GlobList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    pub fn new<I, S>(patterns: I) -> Result<Self, GlobError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| GlobError {
                    pattern: pattern.to_owned(),
                    source,
                })?;
            builder.add(glob);
            kept.push(pattern.to_owned());
        }
        let set = builder.build().map_err(|source| GlobError {
            pattern: kept.join(","),
            source,
        })?;
        Ok(Self {
            patterns: kept,
            set,
        })
    }

    /// The first pattern that matches `value`, if any.
    pub fn first_match(&self, value: &str) -> Option<&str> {
        self.set
            .matches(value)
            .first()
            .map(|&i| self.patterns[i].as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_values_and_not_across_slashes() {
        let globs = GlobList::new(["ci/*", "*/cursor-*", "bot-?"]).unwrap();
        let cases = [
            ("ci/agent", Some("ci/*")),
            ("prod/cursor-1", Some("*/cursor-*")),
            ("bot-1", Some("bot-?")),
            ("bot-12", None),
            ("ci/a/b", None),
            ("xci/agent", None),
            ("prod/agent", None),
        ];
        for (value, expected) in cases {
            assert_eq!(globs.first_match(value), expected, "value {value}");
        }
    }

    #[test]
    fn empty_patterns_are_ignored_and_bad_ones_are_reported() {
        assert!(GlobList::new(["", "  "]).unwrap().is_empty());
        let err = GlobList::new(["ok", "[unclosed"]).unwrap_err();
        assert!(err.to_string().contains("\"[unclosed\""), "{err}");
    }
}
