"""The room rules (REQUIREMENTS.md §3 "Control rules"), as pure functions over data.

Every rule is one method of `RoomPolicy` that returns nothing or raises `ChatError`;
none reads a database or a clock (the caller passes ``now``), so each is tested on its
own. `appliance.chat.store` calls them inside the write transaction, with the rows it
has just read, so a check and the change it guards cannot be separated by another
write.

The rules, in the order a room meets them:

==========================  ==========================================================
who may create a room       any user; members must be users of this box's agencies;
                            a broadcast room only an agency admin, unless the agency
                            lets everyone (``broadcast_creators``; issue 16)
direct rooms                one per pair; not with yourself; in normal mode not with
                            someone of higher rank (public mode, or the senior person
                            starting it, allows it); not between two members of a
                            ``no_private_chat`` room (except its owner)
group and secret rooms      in normal mode the owner may not create, add to or remove
                            from a room so that everyone else in it outranks them:
                            that is a direct chat with a senior in disguise (issue
                            16). Public mode of the seniors' agencies allows it, and a
                            senior who makes or hands over such a room chose it.
who changes a room          only the owner: add or remove members (at once, nobody
                            accepts), rename, change options, delete, transfer
                            ownership (to a member)
leaving                     never by yourself: the owner removes you
direct rooms' members       fixed: always the same two people
who posts                   members; in a broadcast room only the owner and the
                            posters the owner names
when                        within the room's working hours, if it has them
what                        in an auto-location room, only messages with a location
edit, delete a message      only its sender
==========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Collection

from appliance.chat.errors import ChatError
from appliance.chat.models import Message, Room
from appliance.directory import User


class RoomPolicy:
    """The rules of rooms and messages; see the module docstring for the table."""

    @staticmethod
    def check_member_candidate(address: str, user: User | None) -> None:
        """Only people of this box's agencies (directory users, enabled) join rooms."""
        if user is None or user.disabled:
            raise ChatError(
                422,
                "unknown_user",
                f"{address} is not a user of this box's agencies",
                f"{address} ไม่ใช่ผู้ใช้ของหน่วยงานในระบบนี้",
            )

    @staticmethod
    def check_direct(
        starter: User,
        other: User,
        *,
        public_mode: bool,
        restricting_rooms: Collection[Room],
    ) -> None:
        """May *starter* open a new direct chat with *other*?

        *restricting_rooms*: the ``no_private_chat`` rooms both are members of.
        """
        if starter.address == other.address:
            raise ChatError(
                422,
                "direct_with_self",
                "A direct chat needs another person",
                "ห้องสนทนาส่วนตัวต้องมีอีกคนหนึ่ง",
            )
        if not public_mode and other.rank > starter.rank:
            raise ChatError(
                403,
                "higher_rank",
                "You cannot start a private chat with someone of higher rank; "
                "they may start one with you",
                "ไม่สามารถเริ่มสนทนาส่วนตัวกับผู้ที่มีตำแหน่งสูงกว่าได้ ผู้บังคับบัญชาสามารถเริ่มสนทนากับท่านได้",
            )
        # The owner of a no-private-chat room set the restriction for its members,
        # not for themselves: a team lead may still talk to each member alone.
        blocking = [r for r in restricting_rooms if starter.address != r.owner != other.address]
        if blocking:
            raise ChatError(
                403,
                "no_private_chat",
                f"Members of the room {blocking[0].name or blocking[0].id!r} may not chat "
                "privately with each other",
                f"สมาชิกของห้อง {blocking[0].name or blocking[0].id!r} ไม่สามารถสนทนาส่วนตัวระหว่างกันได้",
            )

    @staticmethod
    def check_not_disguised_direct(
        owner: User, others: Collection[User], *, public_mode: bool
    ) -> None:
        """May *owner* hold a group or secret room with exactly these *others*?

        Refused in normal mode when there is someone else and every one of them
        outranks the owner: the room would reach seniors the direct-chat rule protects.
        *public_mode*: whether every outranking member's agency runs chat in public mode.
        """
        if public_mode or not others:
            return
        if all(other.rank > owner.rank for other in others):
            raise ChatError(
                403,
                "higher_rank_group",
                "A room whose other members all outrank you is a private chat with them, "
                "which you cannot start; add a colleague of your own rank or below, "
                "or ask them to start it",
                "ห้องที่สมาชิกอื่นทุกคนมีตำแหน่งสูงกว่าท่าน เท่ากับการสนทนาส่วนตัวกับผู้บังคับบัญชา "
                "ซึ่งท่านเริ่มเองไม่ได้ กรุณาเพิ่มผู้ร่วมงานที่มีตำแหน่งเท่ากันหรือต่ำกว่า "
                "หรือขอให้ผู้บังคับบัญชาเป็นผู้เริ่ม",
            )

    @staticmethod
    def check_broadcast_creator(*, is_admin: bool, everyone_may: bool) -> None:
        """Only agency admins create broadcast rooms, unless the agency lets everyone."""
        if not (is_admin or everyone_may):
            raise ChatError(
                403,
                "broadcast_admins_only",
                "Only the agency's administrators may create a broadcast room",
                "เฉพาะผู้ดูแลระบบของหน่วยงานเท่านั้นที่สร้างห้องประกาศได้",
            )

    @staticmethod
    def check_owner(room: Room, actor: str, action_en: str, action_th: str) -> None:
        """Only the owner adds, removes, renames, changes, deletes or transfers."""
        if room.owner != actor:
            raise ChatError(
                403,
                "not_owner",
                f"Only the room's owner may {action_en}",
                f"เฉพาะเจ้าของห้องเท่านั้นที่{action_th}ได้",
            )

    @staticmethod
    def check_membership_change(room: Room) -> None:
        """A direct room always holds the same two people."""
        if room.kind == "direct":
            raise ChatError(
                409,
                "direct_room_fixed",
                "A direct chat always has the same two people; create a group instead",
                "ห้องสนทนาส่วนตัวมีสมาชิกสองคนเสมอ กรุณาสร้างกลุ่มแทน",
            )

    @staticmethod
    def check_remove(room: Room, address: str) -> None:
        """The owner cannot remove themselves: a room always has an owner who is in it."""
        if address == room.owner:
            raise ChatError(
                409,
                "owner_stays",
                "The owner cannot be removed; transfer ownership first",
                "ไม่สามารถลบเจ้าของห้องได้ กรุณาโอนความเป็นเจ้าของก่อน",
            )
        if address not in room.members:
            raise ChatError(
                404, "not_a_member", f"{address} is not a member", f"{address} ไม่ได้เป็นสมาชิก"
            )

    @staticmethod
    def check_transfer(room: Room, new_owner: str) -> None:
        """Ownership goes only to a member of the room."""
        if new_owner not in room.members:
            raise ChatError(
                409,
                "owner_must_be_member",
                "Ownership can only be transferred to a member of the room",
                "โอนความเป็นเจ้าของได้เฉพาะให้สมาชิกของห้องเท่านั้น",
            )

    @staticmethod
    def check_leave(room: Room) -> None:
        """Members cannot leave; they ask the owner to remove them."""
        raise ChatError(
            403,
            "cannot_leave",
            f"Members cannot leave a room; ask the owner ({room.owner}) to remove you",
            f"สมาชิกไม่สามารถออกจากห้องเองได้ กรุณาขอให้เจ้าของห้อง ({room.owner}) นำท่านออก",
        )

    @staticmethod
    def is_visible(room: Room, now: float) -> bool:
        """A room outside its working hours is hidden from room lists."""
        hours = room.options.working_hours
        return hours is None or hours.is_open(now)

    @staticmethod
    def check_post(room: Room, sender: str, now: float, *, has_location: bool) -> None:
        """May *sender* post this message in *room* now?"""
        if room.kind == "broadcast" and sender != room.owner and sender not in room.options.posters:
            raise ChatError(
                403,
                "broadcast_only",
                "Only the owner and the people they name post in a broadcast room",
                "ห้องประกาศ เฉพาะเจ้าของห้องและผู้ที่ได้รับมอบหมายเท่านั้นที่ส่งข้อความได้",
            )
        hours = room.options.working_hours
        if hours is not None and not hours.is_open(now):
            en, th = hours.describe()
            raise ChatError(
                403,
                "outside_working_hours",
                f"This room is open only {en}; try again within those hours",
                f"ห้องนี้เปิดเฉพาะ {th} กรุณาส่งใหม่ในเวลาทำการ",
            )
        if room.options.auto_location and not has_location:
            raise ChatError(
                422,
                "location_required",
                "Every message in this room must carry your location",
                "ทุกข้อความในห้องนี้ต้องระบุตำแหน่งที่ตั้งของท่าน",
            )

    @staticmethod
    def check_author(message: Message, actor: str, action_en: str, action_th: str) -> None:
        """Only the sender edits or deletes a message."""
        if message.sender != actor:
            raise ChatError(
                403,
                "not_sender",
                f"Only the sender may {action_en} a message",
                f"เฉพาะผู้ส่งเท่านั้นที่{action_th}ข้อความได้",
            )
        if message.deleted:
            raise ChatError(409, "message_deleted", "The message was deleted", "ข้อความถูกลบแล้ว")
