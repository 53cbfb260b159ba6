//! Schema versions, as both stores keep them: the `schema_version` row of their meta table
//! says which of their ordered migrations a database has had. No row: version 1 (the
//! message log as first released, before versions were recorded).

use super::StoreError;

/// The version a database is at, from its `schema_version` row; refuses a version this
/// build does not know (newer than `latest`) or a value that is not one.
pub(super) fn found_version(row: Option<String>, latest: i64) -> Result<i64, StoreError> {
    let version = match row {
        None => 1,
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| StoreError::Damaged(format!("schema version {v:?} is not a number")))?,
    };
    if version > latest {
        return Err(StoreError::Damaged(format!(
            "the database has schema version {version}; this build knows up to {latest}"
        )));
    }
    Ok(version)
}

/// The migrations a database at `version` still needs: `migrations[i]` makes version
/// `i + 2`.
pub(super) fn pending<'a>(migrations: &'a [&'a str], version: i64) -> &'a [&'a str] {
    let done = usize::try_from(version - 1)
        .unwrap_or(0)
        .min(migrations.len());
    &migrations[done..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(found_version(None, 2).unwrap(), 1);
        assert_eq!(found_version(Some("2".into()), 2).unwrap(), 2);
        assert!(found_version(Some("3".into()), 2).is_err());
        assert!(found_version(Some("x".into()), 2).is_err());
        let m = ["a", "b"];
        assert_eq!(pending(&m, 1), ["a", "b"]);
        assert_eq!(pending(&m, 2), ["b"]);
        assert!(pending(&m, 3).is_empty());
    }
}
