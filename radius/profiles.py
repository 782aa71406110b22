"""Vendor profiles: how each kind of NAS is told a speed, a volume quota and a
walled garden.

A NAS record names its vendor (`Nas.vendor`); the profile of that vendor turns
the plan's `SpeedProfile` (kbit/s), a volume quota (octets) and a final-unit
redirect into that vendor's attributes. Unknown vendors get the generic
profile: the speed profile's name (or "down/up" in kbit/s) as Filter-Id and
no volume quota, which every NAS can map to a local policy.

==============  ===========================================  ==========================
vendor          speed                                        volume quota
==============  ===========================================  ==========================
mikrotik        Mikrotik-Rate-Limit "upk/downk" (rx/tx)      Mikrotik-Total-Limit (+Gigawords)
cisco           Cisco-AVPair sub-qos-policy-in/out (named)   -
                or lcp:interface-config rate-limit
juniper, erx    ERX-Qos-Profile-Name, ERX-Service-Activate:1 ERX-Service-Volume:1 (MB)
huawei          Huawei-Input/Output-Average/Peak-Rate (bps)  Huawei-Remanent-Volume (KB)
chillispot,     ChilliSpot-Bandwidth-Max-Up/Down (bps)       ChilliSpot-Max-Total-Octets
coova                                                        (+Gigawords)
wispr           WISPr-Bandwidth-Max-Up/Down (bps)            -
accel-ppp       Filter-Id "down/up" (kbit/s, its shaper)     -
generic         Filter-Id (profile name or "down/up")        -
==============  ===========================================  ==========================

Attribute numbers come from conf/dictionaries; they are constants here so the
hot path never looks a name up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ocs.model import FinalUnit, SpeedProfile

from .codec import A, tagged, u32, vsa

MIKROTIK, CISCO, ERX, HUAWEI, CHILLI, WISPR = 14988, 9, 4874, 2011, 14559, 14122
MIKROTIK_RATE_LIMIT = vsa(MIKROTIK, 8)
MIKROTIK_TOTAL_LIMIT = vsa(MIKROTIK, 17)
MIKROTIK_TOTAL_LIMIT_GW = vsa(MIKROTIK, 18)
MIKROTIK_ADDRESS_LIST = vsa(MIKROTIK, 19)
CISCO_AVPAIR = vsa(CISCO, 1)
ERX_QOS_PROFILE = vsa(ERX, 26)
ERX_SERVICE_ACTIVATE = vsa(ERX, 65)
ERX_SERVICE_VOLUME = vsa(ERX, 67)
HUAWEI_INPUT_AVG, HUAWEI_INPUT_PEAK = vsa(HUAWEI, 2), vsa(HUAWEI, 3)
HUAWEI_OUTPUT_AVG, HUAWEI_OUTPUT_PEAK = vsa(HUAWEI, 5), vsa(HUAWEI, 6)
HUAWEI_REMANENT_VOLUME = vsa(HUAWEI, 15)
HUAWEI_REDIRECT_URL = vsa(HUAWEI, 140)
CHILLI_MAX_TOTAL, CHILLI_MAX_TOTAL_GW = vsa(CHILLI, 3), vsa(CHILLI, 23)
CHILLI_BW_UP, CHILLI_BW_DOWN = vsa(CHILLI, 4), vsa(CHILLI, 5)
WISPR_REDIRECTION_URL = vsa(WISPR, 4)
WISPR_BW_UP, WISPR_BW_DOWN = vsa(WISPR, 7), vsa(WISPR, 8)

Attrs = list[tuple[int, bytes]]
_U32 = 0xFFFFFFFF


def _split64(octets: int) -> tuple[int, int]:
    """(low 32 bits, gigawords) of a 64-bit octet count."""
    return octets & _U32, min(octets >> 32, _U32)


@dataclass(frozen=True)
class VendorProfile:
    """Writes one vendor's attributes. Subclasses override what the vendor supports."""

    name: str = "generic"
    supports_volume_quota: bool = False

    def speed(self, profile: SpeedProfile) -> Attrs:
        label = profile.name or f"{profile.down_kbps}/{profile.up_kbps}"
        return [(A.FILTER_ID, label.encode())]

    def volume_quota(self, octets: int) -> Attrs:
        return []

    def walled_garden(self, final: FinalUnit) -> Attrs:
        """A restricted session: the plan's filter, and the redirect URL where the vendor has one."""
        out: Attrs = []
        if final.filter_id:
            out.append((A.FILTER_ID, final.filter_id.encode()))
        return out


class Mikrotik(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        # RouterOS reads rx/tx from its own side: rx is what the client uploads.
        return [(MIKROTIK_RATE_LIMIT, f"{p.up_kbps}k/{p.down_kbps}k".encode())]

    def volume_quota(self, octets: int) -> Attrs:
        low, gw = _split64(octets)
        return [(MIKROTIK_TOTAL_LIMIT, u32(low)), (MIKROTIK_TOTAL_LIMIT_GW, u32(gw))]

    def walled_garden(self, final: FinalUnit) -> Attrs:
        out = super().walled_garden(final)
        if final.filter_id:  # RouterOS applies an address list the firewall redirects
            out.append((MIKROTIK_ADDRESS_LIST, final.filter_id.encode()))
        return out


class Cisco(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        if p.name:  # ISG / BNG: named QoS policies configured on the router
            return [(CISCO_AVPAIR, f"subscriber:sub-qos-policy-in={p.name}-in".encode()),
                    (CISCO_AVPAIR, f"subscriber:sub-qos-policy-out={p.name}-out".encode())]
        up, down = p.up_kbps * 1000, p.down_kbps * 1000
        return [(CISCO_AVPAIR, f"lcp:interface-config=rate-limit input {up} "
                               f"{max(8000, up // 8)} {max(8000, up // 4)} conform-action "
                               f"transmit exceed-action drop".encode()),
                (CISCO_AVPAIR, f"lcp:interface-config=rate-limit output {down} "
                               f"{max(8000, down // 8)} {max(8000, down // 4)} conform-action "
                               f"transmit exceed-action drop".encode())]


class JuniperErx(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        name = p.name or f"{p.down_kbps}k-{p.up_kbps}k"
        # A dynamic service with the rates as parameters (JunOS "service(down,up)").
        return [(ERX_QOS_PROFILE, name.encode()),
                (ERX_SERVICE_ACTIVATE,
                 tagged(1, f"speed({p.down_kbps * 1000},{p.up_kbps * 1000})".encode()))]

    def volume_quota(self, octets: int) -> Attrs:
        mb = min(-(-octets // 2**20), 0xFFFFFF)  # tagged integers carry 24 bits
        return [(ERX_SERVICE_VOLUME, tagged(1, u32(mb)))]


class Huawei(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        up, down = min(p.up_kbps * 1000, _U32), min(p.down_kbps * 1000, _U32)
        return [(HUAWEI_INPUT_AVG, u32(up)), (HUAWEI_INPUT_PEAK, u32(up)),
                (HUAWEI_OUTPUT_AVG, u32(down)), (HUAWEI_OUTPUT_PEAK, u32(down))]

    def volume_quota(self, octets: int) -> Attrs:
        return [(HUAWEI_REMANENT_VOLUME, u32(min(-(-octets // 1024), _U32)))]

    def walled_garden(self, final: FinalUnit) -> Attrs:
        out = super().walled_garden(final)
        if final.redirect_url:
            out.append((HUAWEI_REDIRECT_URL, final.redirect_url.encode()))
        return out


class ChilliSpot(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        return [(CHILLI_BW_UP, u32(min(p.up_kbps * 1000, _U32))),
                (CHILLI_BW_DOWN, u32(min(p.down_kbps * 1000, _U32)))]

    def volume_quota(self, octets: int) -> Attrs:
        low, gw = _split64(octets)
        return [(CHILLI_MAX_TOTAL, u32(low)), (CHILLI_MAX_TOTAL_GW, u32(gw))]

    def walled_garden(self, final: FinalUnit) -> Attrs:
        out = super().walled_garden(final)
        if final.redirect_url:
            out.append((WISPR_REDIRECTION_URL, final.redirect_url.encode()))
        return out


class Wispr(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        return [(WISPR_BW_UP, u32(min(p.up_kbps * 1000, _U32))),
                (WISPR_BW_DOWN, u32(min(p.down_kbps * 1000, _U32)))]

    def walled_garden(self, final: FinalUnit) -> Attrs:
        out = super().walled_garden(final)
        if final.redirect_url:
            out.append((WISPR_REDIRECTION_URL, final.redirect_url.encode()))
        return out


class AccelPpp(VendorProfile):
    def speed(self, p: SpeedProfile) -> Attrs:
        return [(A.FILTER_ID, f"{p.down_kbps}/{p.up_kbps}".encode())]


PROFILES: dict[str, VendorProfile] = {
    "generic": VendorProfile(),
    "mikrotik": Mikrotik("mikrotik", True),
    "cisco": Cisco("cisco"),
    "juniper": JuniperErx("juniper", True),
    "erx": JuniperErx("erx", True),
    "huawei": Huawei("huawei", True),
    "chillispot": ChilliSpot("chillispot", True),
    "coova": ChilliSpot("coova", True),
    "wispr": Wispr("wispr"),
    "accel-ppp": AccelPpp("accel-ppp"),
}

#: Vendors whose accounting is calls (rated by destination), not data sessions.
VOICE_VENDORS = frozenset({"freeswitch", "asterisk", "kamailio"})


def profile_for(vendor: str | None) -> VendorProfile:
    return PROFILES.get((vendor or "generic").lower(), PROFILES["generic"])
