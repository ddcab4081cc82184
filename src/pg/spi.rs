//! SPI helpers every room uses: one way to unwrap an SPI result and to read
//! an optional single value.

/// Unwraps an SPI result; SPI only fails this way on a bug of ours.
pub fn spi<T>(result: Result<T, pgrx::spi::SpiError>) -> T {
    result.unwrap_or_else(|e| pgrx::error!("segments: SPI failed: {e}"))
}

/// The first column of the first row of a query, or None when it returns
/// no row (pgrx's `get_one` treats that as an error).
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
