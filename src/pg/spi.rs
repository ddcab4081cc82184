//! SPI helpers every room uses: one way to unwrap an SPI result and to read
//! an optional single value.

/// Unwraps an SPI result; SPI only fails this way on a bug of ours.
pub fn spi<T>(result: Result<T, pgrx::spi::SpiError>) -> T {
    result.unwrap_or_else(|e| pgrx::error!("segments: SPI failed: {e}"))
}

/// The first column of the first row of a query, or None when it returns
/// no row (pgrx's `get_one` treats that as an error). Read-only: unlike
/// pgrx's `get_one`, it assigns no transaction id, so it works on a hot
/// standby. Every read goes through here or `Spi::connect`.
pub fn optional_value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    pgrx::spi::Spi::connect(|client| {
        let table = spi(client.select(sql, Some(1), args));
        if table.is_empty() {
            None
        } else {
            spi(table.first().get::<T>(1))
        }
    })
}

/// What has columns to read: a row, or a result table (its first row).
pub trait Columns {
    fn column<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
        &self,
        ordinal: usize,
    ) -> pgrx::spi::SpiResult<Option<T>>;
}

impl Columns for pgrx::spi::SpiHeapTupleData<'_> {
    fn column<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
        &self,
        ordinal: usize,
    ) -> pgrx::spi::SpiResult<Option<T>> {
        self.get(ordinal)
    }
}

impl Columns for pgrx::spi::SpiTupleTable<'_> {
    fn column<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
        &self,
        ordinal: usize,
    ) -> pgrx::spi::SpiResult<Option<T>> {
        self.get(ordinal)
    }
}

/// A column that the query guarantees is not NULL (a NOT NULL column, a
/// count): a NULL there is a bug of ours, raised as an internal error
/// naming the column, never a panic.
pub fn required<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &impl Columns,
    ordinal: usize,
) -> T {
    spi(row.column::<T>(ordinal)).unwrap_or_else(|| {
        pgrx::error!("segments: internal error: column {ordinal} of a catalog query is NULL")
    })
}

/// Runs `sql` through a cursor, `f` seeing each row until it returns
/// false: a batch of `per_fetch` rows is held at a time, not the whole
/// result.
pub fn for_each_row(
    sql: &str,
    per_fetch: i64,
    mut f: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> bool,
) {
    pgrx::spi::Spi::connect(|client| {
        let mut cursor = spi(client.try_open_cursor(sql, &[]));
        let mut going = true;
        while going {
            let table = spi(cursor.fetch(per_fetch));
            if table.is_empty() {
                break;
            }
            for row in table {
                if !f(&row) {
                    going = false;
                    break;
                }
            }
            // SAFETY: the batch just read is no longer used; SPI would
            // otherwise keep every batch until the connection ends.
            unsafe { pgrx::pg_sys::SPI_freetuptable(pgrx::pg_sys::SPI_tuptable) };
        }
    });
}
