/*
 * aperture.h - umbrella header: the whole public API of libaperture.
 */
#ifndef APERTURE_H
#define APERTURE_H

#include "aperture/status.h"
#include "aperture/prep.h"
#include "aperture/hash.h"
#include "aperture/tokens.h"
#include "aperture/config.h"
#include "aperture/cache.h"
#include "aperture/resilience.h"
#include "aperture/limiter.h"
#include "aperture/review.h"
#include "aperture/router.h"
#include "aperture/gateway.h"

#endif
