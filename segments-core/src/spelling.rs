//! "Did you mean" suggestions for misspelt names.

/// The candidate closest to `name`, when it is close enough to be a likely
/// typo: at most a third of the name's letters differ.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lowered = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lowered, &c.to_lowercase()), c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// The "Perhaps you meant ..." hint for a misspelt name, if one is close.
pub fn perhaps<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(name, candidates).map(|c| format!("Perhaps you meant \"{c}\"."))
}

#[cfg(test)]
mod tests {
    use super::{closest, perhaps};

    #[test]
    fn suggests_near_misses_only() {
        let columns = ["country", "city", "age", "email"];
        assert_eq!(closest("contry", columns), Some("country"));
        assert_eq!(closest("Country", columns), Some("country"));
        assert_eq!(closest("emial", columns), Some("email"));
        assert_eq!(closest("zip_code", columns), None);
        assert_eq!(
            perhaps("contry", columns).as_deref(),
            Some("Perhaps you meant \"country\".")
        );
    }
}
